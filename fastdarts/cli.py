"""The `fastdarts` command line: `fastdarts search ...`, `fastdarts train ...`,
`fastdarts plot RUN_DIR` and `fastdarts info`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from .algorithms import ALGORITHMS
from .data import DATASETS
from .search import CHECKPOINT, TUPLE_FIELDS, RunExistsError, SearchConfig, run_search
from .spaces import DEFAULT_C, DEFAULT_LAYERS, SPACES

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text}")
    return value


_EPILOG = """\
Defaults: an option you give always wins. An option you leave out takes, in this order, what
the method needs on the data set, the data set's preset, the method's default, and DARTS's
CIFAR-10 setting. Each option's help shows the default of the plain command (darts on
digits) and where other methods and data sets change it; --print-config prints the
configuration a command resolves to, without searching.
"""

_STATIC_DEFAULTS = SearchConfig()


def _default(field: str) -> str:
    """`[default: X]` for a field whose default does not depend on method or data set."""
    value = getattr(_STATIC_DEFAULTS, field)
    if isinstance(value, tuple):
        value = " ".join(str(v) for v in value)
    return f" [default: {value}]"


def _resolved_value(field: str, algo: str, dataset: str):
    try:
        value = getattr(SearchConfig(algo=algo, dataset=dataset).resolved(), field)
    except ValueError:  # a combination this field's default does not apply to
        return None
    if value is None:  # the supernet's own default (build_supernet) for the darts space
        value = {"init_channels": DEFAULT_C, "layers": DEFAULT_LAYERS["darts"]}.get(field)
    return value


def _default_by_preset(field: str) -> str:
    """`[default: X; ...]` for a field the presets decide, computed from the same
    resolution the search runs (so the help cannot drift from it): the plain command's
    value, then the data sets and, on digits, the methods that change it."""
    def show(value):
        if value is None:
            return "none"
        return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

    base = _resolved_value(field, "darts", "digits")
    parts = [f"default: {show(base)}"]
    for label, combos in (("", [("darts", d) for d in DATASETS if d != "digits"]),
                          ("with ", [(a, "digits") for a in sorted(ALGORITHMS) if a != "darts"])):
        groups: dict[str, list[str]] = {}
        for algo, dataset in combos:
            value = _resolved_value(field, algo, dataset)
            if value != base:
                groups.setdefault(show(value), []).append(algo if label else dataset)
        parts += [f"{label}{', '.join(names)}: {value}" for value, names in groups.items()]
    return " [" + "; ".join(parts) + "]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdarts",
                                     description="Differentiable architecture search.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="run a search; with no options, DARTS on the embedded "
                                      "digits data set", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # Defaults are None so that --resume can tell "given" from "not given"; the help shows
    # the value each option resolves to.
    s.add_argument("--space", choices=SPACES, default=None,
                   help="search space" + _default("space"))
    s.add_argument("--algo", choices=sorted(ALGORITHMS), default=None,
                   help="method" + _default("algo") + ": " + "; ".join(
                       f"{name}: {cls.summary}" for name, cls in sorted(ALGORITHMS.items())))
    s.add_argument("--dataset", choices=sorted(DATASETS), default=None,
                   help="data set" + _default("dataset"))
    s.add_argument("--data-dir", default=None, help="folder holding the data set's files "
                   "(imagenet: the folder with train/<wnid>/ and, for a test split, val/<wnid>/); "
                   "digits and synthetic need none")
    s.add_argument("--run-dir", default=None,
                   help="output folder [default: runs/<algo>-<space>-<dataset>-seed<seed>]")
    s.add_argument("--epochs", type=_positive_int, default=None,
                   help="search epochs" + _default_by_preset("epochs"))
    s.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per weight step and per architecture step"
                        + _default_by_preset("batch_size"))
    s.add_argument("--init-channels", type=_positive_int, default=None,
                   help="channels C of the first cells" + _default_by_preset("init_channels"))
    s.add_argument("--layers", type=_positive_int, default=None,
                   help="cells (DARTS spaces) or cells per stage (nb201: 5 unless given)"
                        + _default_by_preset("layers"))
    s.add_argument("--lr", type=float, default=None,
                   help="weight learning rate (SGD, cosine per epoch)" + _default_by_preset("lr"))
    s.add_argument("--lr-min", type=float, default=None,
                   help="the cosine's floor" + _default_by_preset("lr_min"))
    s.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum" + _default("momentum"))
    s.add_argument("--weight-decay", type=float, default=None,
                   help="SGD weight decay" + _default("weight_decay"))
    s.add_argument("--grad-clip", type=float, default=None,
                   help="gradient-norm clip of the weight step" + _default("grad_clip"))
    s.add_argument("--lr-warmup-epochs", type=int, default=None,
                   help="linear learning-rate warm-up on top of the cosine"
                        + _default_by_preset("lr_warmup_epochs")[:-1]
                        + " when the batch is over 256]")
    s.add_argument("--arch-lr", type=float, default=None,
                   help="architecture learning rate (Adam)" + _default_by_preset("arch_lr"))
    s.add_argument("--arch-weight-decay", type=float, default=None,
                   help="architecture weight decay (Adam)" + _default("arch_weight_decay"))
    s.add_argument("--arch-grad-clip", type=float, default=None,
                   help="gradient-norm clip of the architecture step, 0 or none: off"
                        + _default_by_preset("arch_grad_clip"))
    s.add_argument("--arch-warmup-epochs", type=int, default=None,
                   help="epochs before architecture updates start; a method's warm-up is kept "
                        "as a ratio of --epochs (pcdarts 15 of 50, 35 of 50 on imagenet; "
                        "drnas 10 of each 25-epoch stage)"
                        + _default_by_preset("arch_warmup_epochs"))
    s.add_argument("--seed", type=int, default=None, help="seed of everything" + _default("seed"))
    s.add_argument("--device", default=None,
                   help="auto (the first GPU, else the CPU), cpu, cuda, cuda:1 ..."
                        + _default("device"))
    s.add_argument("--no-channels-last", action="store_true", default=None,
                   help="keep activations NCHW instead of channels_last")
    s.add_argument("--deterministic", action="store_true", default=None,
                   help="repeatable runs on a GPU (deterministic cuDNN algorithms)")
    s.add_argument("--cuda-graph", action="store_true", default=None,
                   help="replay each step as a CUDA graph: the host launches a step with one "
                        "call (a small supernet's GPU step is bound by the host otherwise)")
    s.add_argument("--memory", choices=("low", "fast", "reference"), default=None,
                   help="mixed-op memory mode: low (recompute cells, least memory), fast "
                        "(fused, no recompute) or reference (plain PyTorch)" + _default("memory"))
    s.add_argument("--partial-k", type=_positive_int, default=None,
                   help="channel partitions K of the partial-channel edges (PC-DARTS); must "
                        "divide --init-channels" + _default_by_preset("partial_k"))
    s.add_argument("--partial-selection", choices=("first", "sampled"), default=None,
                   help="channels the partial-channel ops see: the first C/K (the original) or "
                        "a random permutation's first C/K, drawn per edge and step"
                        + _default("partial_selection"))
    s.add_argument("--order", type=int, choices=(1, 2), default=None,
                   help="architecture gradient: 1 first order, 2 second order (unrolled, "
                        "finite-difference Hessian-vector product, no model copy)"
                        + _default("order"))
    s.add_argument("--hvp-r", type=float, default=None,
                   help="second order: eps = hvp_r / ||v||" + _default("hvp_r"))
    s.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                   help="stop each epoch after this many weight steps (quick trials) "
                        "[default: all]")
    d = s.add_argument_group("imagenet options")
    d.add_argument("--imagenet-fractions", type=float, nargs=2, default=None,
                   metavar=("WEIGHTS", "ARCH"),
                   help="per-class fractions of train/ for the weight and the architecture "
                        "splits (disjoint, fixed across searches; PC-DARTS's)"
                        + _default("imagenet_fractions"))
    d.add_argument("--image-size", type=_positive_int, default=None,
                   help="training crop (RandomResizedCrop) and evaluation centre crop "
                        "[default: 224]")
    d.add_argument("--data-workers", type=int, default=None,
                   help="processes decoding JPEG batches [default: min(8, cores)]")
    m = s.add_argument_group("method options (ignored by other methods)")
    m.add_argument("--rf-seed", type=int, default=None,
                   help="rf-darts, rf-pcdarts: seed of the frozen random convolutions "
                        "[default: --seed]")
    m.add_argument("--rf-freeze-classifier", action="store_true", default=None,
                   help="rf-darts, rf-pcdarts: freeze the classifier too (only BN trained)")
    m.add_argument("--sdarts-epsilon", type=float, default=None,
                   help="sdarts-rs, sdarts-adv: final perturbation radius"
                        + _default("sdarts_epsilon"))
    m.add_argument("--sdarts-epsilon-min", type=float, default=None,
                   help="sdarts-rs, sdarts-adv: first epoch's radius"
                        + _default("sdarts_epsilon_min"))
    m.add_argument("--sdarts-attack-steps", type=_positive_int, default=None,
                   help="sdarts-adv: PGD steps of 2 eps / steps" + _default("sdarts_attack_steps"))
    m.add_argument("--drnas-reg", choices=("l2", "kl"), default=None,
                   help="drnas: l2 (Adam weight decay toward Dir(1)) or kl"
                        + _default("drnas_reg"))
    m.add_argument("--drnas-reg-scale", type=float, default=None,
                   help="drnas: the regulariser's weight" + _default("drnas_reg_scale"))
    m.add_argument("--drnas-no-progressive", action="store_true", default=None,
                   help="drnas: one stage, full channels, every op")
    m.add_argument("--drnas-k", type=_positive_int, nargs="+", default=None,
                   help="drnas: partial-channel K per stage; each must divide --init-channels "
                        "[default: 6 4; imagenet 6 3; nb201 4 2]")
    m.add_argument("--drnas-ops", type=_positive_int, nargs="+", default=None,
                   help="drnas: ops kept per stage [default: 7 4; nb201 5 3]")
    m.add_argument("--aux-skip-beta", type=float, default=None,
                   help="darts-minus: the auxiliary skip's first beta, decaying linearly"
                        + _default("aux_skip_beta"))
    s.add_argument("--no-progress", action="store_true", default=None,
                   help="no progress bar (epoch lines are still printed)")
    s.add_argument("--resume", action="store_true",
                   help="continue the search in --run-dir from its last checkpoint")
    s.add_argument("--print-config", action="store_true",
                   help="print the configuration these options resolve to (JSON) and exit")
    _add_train_parser(sub)
    plot = sub.add_parser("plot", help="redraw a search run's pictures: the mixing weights "
                                       "per epoch, a heatmap of the final ones and the cells "
                                       "of its genotype")
    plot.add_argument("run_dir", help="a `fastdarts search` run directory")
    sub.add_parser("info", help="backends (and the one auto picks), device, build metadata")
    return parser


def _add_train_parser(sub) -> None:
    from .retrain import PRESETS, TRAINABLE_DATASETS

    def preset(field: str) -> str:
        return (f" [default: digits {PRESETS['digits'][field]}; cifar10, cifar100, svhn, "
                f"imagenet16-120 {PRESETS['cifar'][field]}]")

    t = sub.add_parser("train", help="retrain a genotype from scratch and report its test "
                                     "accuracy", description="Train a genotype's evaluation "
                       "network (DARTS's NetworkCIFAR) from scratch on the training data and "
                       "test it on the held-out split after every epoch. Options left out take "
                       "the data set's preset; options given win.")
    t.add_argument("--from", dest="from_run", default=None, metavar="RUN_DIR",
                   help="a `fastdarts search` run directory: its genotype and data set")
    t.add_argument("--genotype", default=None,
                   help="a genotype.json, a run directory or a published genotype (DARTS_V1, "
                        "DARTS_V2, PC_DARTS_CIFAR, PC_DARTS_IMAGE)")
    t.add_argument("--dataset", choices=TRAINABLE_DATASETS, default=None,
                   help="[default: the run's (--from), else digits]")
    t.add_argument("--data-dir", default=None, help="folder of the data set's files")
    t.add_argument("--epochs", type=_positive_int, default=None, help=preset("epochs"))
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help=preset("batch_size"))
    t.add_argument("--lr", type=float, default=None, help="SGD learning rate, cosine to "
                   "--lr-min" + preset("lr"))
    t.add_argument("--lr-min", type=float, default=None, help="[default: 0]")
    t.add_argument("--weight-decay", type=float, default=None, help=preset("weight_decay"))
    t.add_argument("--init-channels", type=_positive_int, default=None,
                   help=preset("init_channels"))
    t.add_argument("--layers", type=_positive_int, default=None, help="cells" + preset("layers"))
    t.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, default=None,
                   help="the auxiliary head after cell 2L/3, its loss weighted 0.4"
                        + preset("auxiliary"))
    t.add_argument("--drop-path-prob", type=float, default=None,
                   help="reached at the last epoch, rising linearly from 0"
                        + preset("drop_path_prob"))
    t.add_argument("--cutout", type=int, default=None, help="cutout side in pixels, 0: none"
                   + preset("cutout"))
    t.add_argument("--seed", type=int, default=None, help="[default: 0]")
    t.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N [default: auto]")
    t.add_argument("--run-dir", default=None,
                   help="[default: runs/train-<genotype or run>-<dataset>-seed<seed>]")
    t.add_argument("--no-progress", action="store_true", default=None,
                   help="no progress bar (epoch lines are still printed)")
    t.add_argument("--resume", action="store_true",
                   help="continue the training in --run-dir from its last checkpoint")
    t.add_argument("--print-config", action="store_true",
                   help="print the configuration these options resolve to (JSON) and exit")


def _plot_main(run_dir: str) -> int:
    from .cell_diagram import draw_genotype
    from .genotypes import DartsGenotype, load_genotype
    from .report import JsonlLog, plot_arch_weights, plot_final_weights

    run = Path(run_dir)
    history = [r for r in JsonlLog(run / "log.jsonl").records() if "weights" in r]
    if not history:
        print(f"fastdarts plot: error: {run} has no log.jsonl with mixing weights (a "
              f"`fastdarts search` run directory has one)", file=sys.stderr)
        return 2
    plot_arch_weights(history, run / "alphas.png", title=str(run.name))
    plot_final_weights(history[-1], run / "alphas_final.png", title=str(run.name))
    written = [run / "alphas.png", run / "alphas_final.png"]
    if (run / "genotype.json").is_file():
        genotype = load_genotype(run / "genotype.json")
        if isinstance(genotype, DartsGenotype):
            written += draw_genotype(genotype, run / "cell")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _train_main(args, parser) -> int:
    from .retrain import CHECKPOINT as TRAIN_CHECKPOINT
    from .retrain import TrainConfig, run_training

    given = {k: v for k, v in vars(args).items()
             if k not in ("command", "resume", "print_config", "no_progress") and v is not None}
    if args.no_progress:
        given["progress"] = False
    try:
        if args.resume:
            cfg = _resumed_config("train", TrainConfig, TRAIN_CHECKPOINT, given)
        else:
            cfg = TrainConfig(**given)
        if args.print_config:
            print(json.dumps(cfg.resolved().to_dict(), indent=2))
            return 0
        run_training(cfg, resume=args.resume)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        print(f"fastdarts train: error: {_in_flags(str(e), parser, 'train')}", file=sys.stderr)
        return 2
    return 0


#: flags that switch a default-True field off
_FIELD_OF_ARG = {"no_channels_last": "channels_last", "no_progress": "progress",
                 "rf_freeze_classifier": "rf_train_classifier",
                 "drnas_no_progressive": "drnas_progressive"}


def _resumed_config(command: str, config_class, checkpoint: str, given: dict,
                    tuple_fields=()):
    """The configuration a run directory's `config.json` stored, with the options `given`
    now over it (`--resume`); JSON lists back to tuples for `tuple_fields`."""
    if "run_dir" not in given:
        raise SystemExit(f"fastdarts {command}: --resume needs --run-dir")
    run_dir = Path(given["run_dir"])
    if not (run_dir / checkpoint).is_file():
        raise SystemExit(f"fastdarts {command}: --resume: no {checkpoint} in {run_dir}")
    stored = json.loads((run_dir / "config.json").read_text())
    stored.update(given)
    for key in tuple_fields:
        if stored.get(key) is not None:
            stored[key] = tuple(stored[key])
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in stored.items() if k in names})


def _config_from_args(args: argparse.Namespace) -> tuple[SearchConfig, bool]:
    given = {}
    for key, value in vars(args).items():
        if key in ("command", "resume", "print_config") or value is None:
            continue
        field = _FIELD_OF_ARG.get(key, key)
        given[field] = (not value) if field in _FIELD_OF_ARG.values() else value

    if args.resume:
        return _resumed_config("search", SearchConfig, CHECKPOINT, given, TUPLE_FIELDS), True

    cfg = SearchConfig(**{k: v for k, v in given.items() if k != "run_dir"})
    if "run_dir" in given:
        cfg.run_dir = given["run_dir"]
    else:
        cfg.run_dir = f"runs/{cfg.algo}-{cfg.space}-{cfg.dataset}-seed{cfg.seed}"
    return cfg, False


def _in_flags(message: str, parser: argparse.ArgumentParser, command: str = "search") -> str:
    """`message` with configuration field names written as the options that set them
    (`partial_k` -> `--partial-k`), for a command-line user. Names with an underscore are
    translated wherever they stand; one-word names (`lr`, `order`) only at the start, where
    they name the field rather than being English."""
    search = parser._subparsers._group_actions[0].choices[command]
    flags = {a.dest: a.option_strings[0] for a in search._actions
             if a.option_strings and a.dest not in _FIELD_OF_ARG}
    flags["run_dir"] = "--run-dir"

    def flag(match: re.Match) -> str:
        name = match.group(0)
        if name in flags and ("_" in name or match.start() == 0):
            return flags[name]
        return name
    message = re.sub(r"(?<![\w-])[a-z][a-z0-9_]*(?![\w(])", flag, message)
    return message.replace("--data-dir (--data-dir)", "--data-dir")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import main as info_main
        return info_main()
    if args.command == "train":
        return _train_main(args, parser)
    if args.command == "plot":
        return _plot_main(args.run_dir)
    try:
        cfg, resume = _config_from_args(args)
        if args.print_config:
            print(json.dumps(cfg.resolved().to_dict(), indent=2))
            return 0
        run_search(cfg, resume=resume)
    except RunExistsError as e:
        print(f"fastdarts search: error: {e.run_dir} already holds a search ({CHECKPOINT}): "
              f"add --resume to continue it, or choose another --run-dir", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        print(f"fastdarts search: error: {_in_flags(str(e), parser)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
