"""Regenerate every measured figure the README states from the committed result files.

The README marks each figure's text as a region naming its renderer and its source files:

    <!-- figure:NAME benchmarks/results/FILE.json [more files] -->
    ...text written by this script...
    <!-- /figure -->

`python benchmarks/readme_figures.py` rewrites every region from its sources;
`python benchmarks/readme_figures.py --check` changes nothing and exits 1 naming each region
whose text differs from what its sources give (tests/test_readme.py runs it). A new
measurement is committed under benchmarks/results/, its path put in the region's marker, and
the script run: the figure then says the commit and date it came from, and cannot drift from
the file. Figures that tests assert (parameter counts, the HVP's error) are not regions: the
tests keep those true.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

REGION = re.compile(r"(<!-- figure:(?P<name>[\w-]+)(?P<sources>(?: [^ >]+)+) -->\n)"
                    r"(?P<body>.*?)(<!-- /figure -->)", re.S)


def _load(path: str) -> dict:
    full = ROOT / path
    if not full.is_file():
        raise SystemExit(f"readme_figures: {path} (named in a README figure marker) does not "
                         f"exist")
    return json.loads(full.read_text())


def _ratio(x: float) -> str:
    return f"{x:.2f}x"


def _fraction(ours: float, original: float) -> str:
    return f"1/{original / ours:.1f}" if ours < original else f"{ours / original:.2f}x"


def _pytest_benchmark_provenance(report: dict) -> str:
    machine = report["machine_info"]
    return (f"commit {machine['git_commit']}, {report['datetime'][:10]}, torch "
            f"{machine['torch']}")


def _steps_by_mode(report: dict) -> dict[str, dict[str, dict]]:
    """{space or supernet: {mode: extra_info}} of a supernet-step benchmark."""
    out: dict[str, dict[str, dict]] = {}
    for bench in report["benchmarks"]:
        e = bench["extra_info"]
        if e.get("kind") == "supernet_step":
            out.setdefault(e["space"], {})[e["mode"]] = e
    return out


def digits_search(sources: list[str]) -> str:
    """The README's search command: held-out accuracy and time (its result.json)."""
    (path,) = sources
    r = _load(path)
    where = r["provenance"]
    total = r["search_time_s_this_session"]
    margins = r.get("final_margins")
    decided = (f" The edges' decision margins (best op's weight minus the runner-up's) end at "
               f"median {margins['median']:.3f}, max {margins['max']:.3f}."
               if margins else "")
    return (f"Measured with the default command at commit {where['commit']} ({where['date']}, "
            f"{where['device']}): **{r['test_accuracy']:.2f}%** accuracy of the supernet on "
            f"the held-out test split (chance 10%), {total / 60:.1f} minutes in all "
            f"({total / r['config']['epochs']:.0f} s per epoch, set-up and the test pass "
            f"included; `{path}`).{decided}\n")


def digits_train(sources: list[str]) -> str:
    """`fastdarts train --from` the README's search run: the retrained cell's test accuracy."""
    (path,) = sources
    r = _load(path)
    where, cfg = r["provenance"], r["config"]
    total = r["train_time_s_this_session"]
    return (f"Measured at commit {where['commit']} ({where['date']}, {where['device']}): the "
            f"cell the README's search found, retrained from scratch on digits "
            f"({r['parameters']:,} parameters, C={cfg['init_channels']}, {cfg['layers']} cells, "
            f"{cfg['epochs']} epochs, {total / 60:.1f} minutes), reaches "
            f"**{r['test_top1']:.2f}%** top-1 on the held-out test split (`{path}`).\n")


def mixed_op_cpu(sources: list[str]) -> str:
    """Whole supernet step per memory mode against the original, in one interleaved run."""
    (path,) = sources
    report = _load(path)
    steps = _steps_by_mode(report)
    batch = next(iter(next(iter(steps.values())).values()))["batch"]
    label = {"darts": "DARTS C=16 L=8", "nb201": "NB201 C=16 N=5"}
    mode_label = {"low": "`low`", "fast": "`fast`",
                  "checkpoint": "`torch.utils.checkpoint` on every cell"}
    lines = [f"`{path}` ({_pytest_benchmark_provenance(report)}, batch {batch}):", "",
             "| supernet | mode | step time vs the original | keeps per image | peak memory "
             "| est. CUDA launches per step |", "|---|---|---|---|---|---|"]
    for space in ("darts", "nb201"):
        ref = steps[space]["reference"]
        first = True
        for mode in ("low", "fast", "checkpoint"):
            e = steps[space][mode]
            launches = (e["host_work"]["cuda_launches_estimate"]
                        / ref["host_work"]["cuda_launches_estimate"])
            lines.append(
                f"| {label[space] if first else ''} | {mode_label[mode]} | "
                f"{_ratio(e['time_vs_reference_interleaved'])} | "
                f"{_fraction(e['saved_MiB_per_image'], ref['saved_MiB_per_image'])} | "
                f"{_fraction(e['peak_MiB'], ref['peak_MiB'])} | {_ratio(launches)} |")
            first = False
    return "\n".join(lines) + "\n"


def imagenet_supernets(sources: list[str]) -> str:
    """Memory of the direct-ImageNet supernets at 224x224, original against `low`."""
    (path,) = sources
    report = _load(path)
    steps = _steps_by_mode(report)
    label = {"pcdarts-imagenet": "PC-DARTS (C=16, L=8, K=2)",
             "drnas-imagenet-stage1": "DrNAS stage 1 (C=48, L=14, K=6, 7 ops)",
             "drnas-imagenet-stage2": "DrNAS stage 2 (K=3, 4 ops)"}
    batch = steps["pcdarts-imagenet"]["reference"]["batch"]
    lines = [f"`{path}` ({_pytest_benchmark_provenance(report)}, batch {batch}):", "",
             "| supernet | original keeps per image | `low` keeps | `low` peak | 80 GiB holds "
             "a batch of (projected: original / `low`) |", "|---|---|---|---|---|"]
    times = []
    for space, name in label.items():
        ref, low = steps[space]["reference"], steps[space]["low"]
        times.append(low["median_s"] / ref["median_s"])
        lines.append(
            f"| {name} | {ref['saved_MiB_per_image']:.1f} MiB | "
            f"{low['saved_MiB_per_image']:.2f} MiB "
            f"({_fraction(low['saved_MiB_per_image'], ref['saved_MiB_per_image'])}) | "
            f"{_fraction(low['peak_MiB'], ref['peak_MiB'])} | "
            f"{ref['projected_batch_80GiB']:,} / {low['projected_batch_80GiB']:,} |")
    lines += ["", f"On that CPU `low` took {min(times):.2f}-{max(times):.2f}x the original's "
                  f"step time."]
    return "\n".join(lines) + "\n"


def second_order(sources: list[str]) -> str:
    """The second-order architecture step: copy-based original against flat buffers."""
    (path,) = sources
    report = _load(path)
    rows = {b["extra_info"]["row"]: b["extra_info"] for b in report["benchmarks"]
            if b["extra_info"].get("kind") == "second_order_step"}
    copy, flat, low = rows["copy"], rows["flat"], rows["flat-low"]
    return (f"DARTS C=16 L=8, batch {copy['batch']} (`{path}`, "
            f"{_pytest_benchmark_provenance(report)}): the copy-based step (the original's "
            f"algorithm) takes {copy['median_s']:.1f} s, peaks at {copy['peak_MiB']:.0f} MiB "
            f"and runs {copy['hvp_operations']:,} tensor operations outside the model passes "
            f"(per-tensor copies and perturbations of {copy['num_weight_tensors']:,} weight "
            f"tensors). fastdarts takes {flat['median_s']:.1f} s and {flat['peak_MiB']:.0f} MiB "
            f"on the same plain supernet, with {flat['hvp_operations']} operations. With the "
            f"supernet in `low` mode it peaks at {low['peak_MiB']:.0f} MiB "
            f"({_fraction(low['peak_MiB'], copy['peak_MiB'])}), at {low['median_s']:.1f} s.\n")


def search_step(sources: list[str]) -> str:
    """The whole search step per method, before and after one change, interleaved."""
    (path,) = sources
    r = _load(path)
    before, after = r["before"], r["after"]

    def pair(method: str, mode: str) -> str:
        return f"{_ratio(before[method][mode])} to {_ratio(after[method][mode])}"
    return (f"On the 2-core CPU the whole search step went from {pair('darts', 'fast')} of "
            f"the original's time in `fast`, and from {pair('darts', 'low')} in `low` "
            f"(DARTS; DrNAS `low` from {pair('drnas', 'low')}; batch {r['batch']}, "
            f"{r['commit_before']} -> {r['commit_after']}, {r['date']}, `{path}`).\n")


def h100_step(sources: list[str]) -> str:
    """The last GPU timing of the whole supernet step: CUDA and Triton backends."""
    by_backend = {}
    for path in sources:
        report = _load(path)
        for bench in report["benchmarks"]:
            e = bench["extra_info"]
            if e.get("kind") == "supernet_step" and e["space"] == "darts":
                by_backend.setdefault(e["mode"], {})[e["backend"]] = e
    low, ref = by_backend["low"], next(iter(by_backend["reference"].values()))
    commit = _load(sources[0])["machine_info"]["git_commit"]
    return (f"`low`: {low['cuda']['median_s']:.2f} s with the CUDA kernels and "
            f"{low['triton']['median_s']:.2f} s with Triton, against the original's "
            f"{ref['median_s']:.2f} s (DARTS C=16 L=8, batch {ref['batch']}, commit {commit}: "
            + ", ".join(f"`{p}`" for p in sources) + ").\n")


FIGURES: dict[str, Callable[[list[str]], str]] = {
    "digits-search": digits_search, "digits-train": digits_train,
    "mixed-op-cpu": mixed_op_cpu,
    "imagenet-supernets": imagenet_supernets, "second-order": second_order,
    "search-step": search_step, "h100-step": h100_step,
}


def render(text: str) -> tuple[str, list[str]]:
    """`text` with every figure region regenerated, and the names of those that changed."""
    changed = []

    def one(match: re.Match) -> str:
        name = match.group("name")
        if name not in FIGURES:
            raise SystemExit(f"readme_figures: unknown figure {name!r} in the README; known: "
                             f"{', '.join(FIGURES)}")
        body = FIGURES[name](match.group("sources").split())
        if body != match.group("body"):
            changed.append(name)
        return match.group(1) + body + match.group(5)
    return REGION.sub(one, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a figure differs from its sources")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new, changed = render(text)
    if args.check:
        if changed:
            print(f"README figures out of date: {', '.join(changed)} (run python "
                  f"benchmarks/readme_figures.py)", file=sys.stderr)
            return 1
        print(f"README figures match their result files ({len(REGION.findall(text))} regions)")
        return 0
    args.readme.write_text(new)
    print(f"rewrote {len(changed)} figure regions: {', '.join(changed) or 'none changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
