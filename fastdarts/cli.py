"""The `fastdarts` command line: `fastdarts search ...` and `fastdarts info`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .algorithms import ALGORITHMS
from .data import DATASETS
from .search import CHECKPOINT, TUPLE_FIELDS, SearchConfig, run_search
from .spaces import SPACES

__all__ = ["main", "build_parser"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdarts",
                                     description="Differentiable architecture search.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="run a search; with no options, DARTS on the embedded "
                                      "digits data set",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Defaults are None so that --resume can tell "given" from "not given".
    s.add_argument("--space", choices=SPACES, default=None, help="search space [darts]")
    s.add_argument("--algo", choices=sorted(ALGORITHMS), default=None,
                   help="method [darts]: " + "; ".join(
                       f"{name}: {cls.summary}" for name, cls in sorted(ALGORITHMS.items())))
    s.add_argument("--dataset", choices=sorted(DATASETS), default=None, help="data set [digits]")
    s.add_argument("--data-dir", default=None, help="folder holding the data set's files "
                   "(imagenet: the folder with train/<wnid>/ and, for a test split, val/<wnid>/)")
    s.add_argument("--run-dir", default=None,
                   help="output folder [runs/<algo>-<space>-<dataset>-seed<seed>]")
    s.add_argument("--epochs", type=_positive_int, default=None)
    s.add_argument("--batch-size", type=_positive_int, default=None)
    s.add_argument("--init-channels", type=_positive_int, default=None)
    s.add_argument("--layers", type=_positive_int, default=None,
                   help="cells (DARTS spaces) or cells per stage (nb201)")
    s.add_argument("--lr", type=float, default=None, help="weight learning rate [0.025; pcdarts, drnas 0.1]")
    s.add_argument("--lr-min", type=float, default=None, help="cosine floor [0.001; pcdarts, drnas 0]")
    s.add_argument("--momentum", type=float, default=None)
    s.add_argument("--weight-decay", type=float, default=None)
    s.add_argument("--grad-clip", type=float, default=None)
    s.add_argument("--lr-warmup-epochs", type=int, default=None,
                   help="linear learning-rate warm-up [5 on imagenet with batch > 256, else 0]")
    s.add_argument("--arch-lr", type=float, default=None)
    s.add_argument("--arch-weight-decay", type=float, default=None)
    s.add_argument("--arch-grad-clip", type=float, default=None,
                   help="gradient-norm clip of the architecture step, 0 off [imagenet 5, else off]")
    s.add_argument("--arch-warmup-epochs", type=int, default=None,
                   help="epochs before architecture updates start [0; pcdarts 15 of 50, "
                        "scaled to --epochs (35 of 50 on imagenet); drnas 10 of each 25-epoch "
                        "stage, scaled]")
    s.add_argument("--seed", type=int, default=None, help="[2, as DARTS]")
    s.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ... [auto]")
    s.add_argument("--no-channels-last", action="store_true", default=None,
                   help="keep activations NCHW instead of channels_last")
    s.add_argument("--deterministic", action="store_true", default=None,
                   help="repeatable runs on a GPU (deterministic cuDNN algorithms)")
    s.add_argument("--cuda-graph", action="store_true", default=None,
                   help="replay each step as a CUDA graph: the host launches a step with one "
                        "call (a small supernet's GPU step is bound by the host otherwise)")
    s.add_argument("--memory", choices=("low", "fast", "reference"), default=None,
                   help="mixed-op memory mode: low (recompute cells, least memory), fast "
                        "(fused, no recompute) or reference (plain PyTorch) [low]")
    s.add_argument("--partial-k", type=_positive_int, default=None,
                   help="channel partitions K of the partial-channel edges (PC-DARTS; "
                        "[4 with --algo pcdarts])")
    s.add_argument("--partial-selection", choices=("first", "sampled"), default=None,
                   help="channels the partial-channel ops see: the first C/K (the original) or "
                        "a random permutation's first C/K, drawn per edge and step [first]")
    s.add_argument("--order", type=int, choices=(1, 2), default=None,
                   help="architecture gradient: 1 first order, 2 second order (unrolled, "
                        "finite-difference Hessian-vector product, no model copy) [1]")
    s.add_argument("--hvp-r", type=float, default=None,
                   help="second order: eps = hvp_r / ||v|| [0.01]")
    s.add_argument("--steps-per-epoch", type=_positive_int, default=None,
                   help="stop each epoch after this many weight steps (quick trials) [all]")
    d = s.add_argument_group("imagenet options")
    d.add_argument("--imagenet-fractions", type=float, nargs=2, default=None,
                   metavar=("WEIGHTS", "ARCH"),
                   help="per-class fractions of train/ for the weight and the architecture "
                        "splits (disjoint, fixed across searches) [0.1 0.025, as PC-DARTS]")
    d.add_argument("--image-size", type=_positive_int, default=None,
                   help="training crop (RandomResizedCrop) and evaluation centre crop [224]")
    d.add_argument("--data-workers", type=int, default=None,
                   help="processes decoding JPEG batches [min(8, cores)]")
    m = s.add_argument_group("method options (ignored by other methods)")
    m.add_argument("--rf-seed", type=int, default=None,
                   help="rf-darts, rf-pcdarts: seed of the frozen random convolutions "
                        "[--seed]")
    m.add_argument("--rf-freeze-classifier", action="store_true", default=None,
                   help="rf-darts, rf-pcdarts: freeze the classifier too (only BN trained)")
    m.add_argument("--sdarts-epsilon", type=float, default=None,
                   help="sdarts-rs, sdarts-adv: final perturbation radius [0.3]")
    m.add_argument("--sdarts-epsilon-min", type=float, default=None,
                   help="sdarts-rs, sdarts-adv: first epoch's radius [0.03]")
    m.add_argument("--sdarts-attack-steps", type=_positive_int, default=None,
                   help="sdarts-adv: PGD steps of 2 eps / steps [7]")
    m.add_argument("--drnas-reg", choices=("l2", "kl"), default=None,
                   help="drnas: l2 (Adam weight decay toward Dir(1)) or kl [l2]")
    m.add_argument("--drnas-reg-scale", type=float, default=None, help="drnas: [1e-3]")
    m.add_argument("--drnas-no-progressive", action="store_true", default=None,
                   help="drnas: one stage, full channels, every op")
    m.add_argument("--drnas-k", type=_positive_int, nargs="+", default=None,
                   help="drnas: partial-channel K per stage [6 4; imagenet 6 3; nb201 4 2]")
    m.add_argument("--drnas-ops", type=_positive_int, nargs="+", default=None,
                   help="drnas: ops kept per stage [7 4; nb201: 5 3]")
    m.add_argument("--aux-skip-beta", type=float, default=None,
                   help="darts-minus: the auxiliary skip's first beta, decaying linearly [1.0]")
    s.add_argument("--no-progress", action="store_true", default=None,
                   help="no progress bar (epoch lines are still printed)")
    s.add_argument("--resume", action="store_true",
                   help="continue the search in --run-dir from its last checkpoint")
    sub.add_parser("info", help="backends, device and build metadata")
    return parser


#: flags that switch a default-True field off
_FIELD_OF_ARG = {"no_channels_last": "channels_last", "no_progress": "progress",
                 "rf_freeze_classifier": "rf_train_classifier",
                 "drnas_no_progressive": "drnas_progressive"}


def _config_from_args(args: argparse.Namespace) -> tuple[SearchConfig, bool]:
    given = {}
    for key, value in vars(args).items():
        if key in ("command", "resume") or value is None:
            continue
        field = _FIELD_OF_ARG.get(key, key)
        given[field] = (not value) if field in _FIELD_OF_ARG.values() else value

    if args.resume:
        if "run_dir" not in given:
            raise SystemExit("fastdarts search: --resume needs --run-dir")
        config_path = Path(given["run_dir"]) / "config.json"
        if not (Path(given["run_dir"]) / CHECKPOINT).is_file():
            raise SystemExit(f"fastdarts search: --resume: no {CHECKPOINT} in {given['run_dir']}")
        stored = json.loads(config_path.read_text())
        stored.update(given)
        for key in TUPLE_FIELDS:
            if stored.get(key) is not None:
                stored[key] = tuple(stored[key])
        names = {f.name for f in dataclasses.fields(SearchConfig)}
        return SearchConfig(**{k: v for k, v in stored.items() if k in names}), True

    cfg = SearchConfig(**{k: v for k, v in given.items() if k != "run_dir"})
    if "run_dir" in given:
        cfg.run_dir = given["run_dir"]
    else:
        cfg.run_dir = f"runs/{cfg.algo}-{cfg.space}-{cfg.dataset}-seed{cfg.seed}"
    return cfg, False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from .info import main as info_main
        return info_main()
    cfg, resume = _config_from_args(args)
    try:
        run_search(cfg, resume=resume)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        print(f"fastdarts search: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
