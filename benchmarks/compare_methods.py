"""Every method on the same search budget on the embedded digits data set: genotype, supernet
test accuracy, search time and the memory the search added, one fresh process per method.

    python benchmarks/compare_methods.py --epochs 4 --layers 3 --out benchmarks/results/X

Memory on the CPU: the resident-set high-water mark over the search (VmHWM, reset through
/proc/self/clear_refs once the data are loaded and the plotting library imported) minus the
resident set at that moment, with
every allocation of 4 KiB or more its own mapping (`memory_probe.probe_env`) so that freed
activations leave the resident set. On a GPU: torch.cuda.max_memory_allocated over the search.
Writes X.json and X.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory_probe import probe_env  # noqa: E402

METHODS = ("darts", "pcdarts", "rf-darts", "rf-pcdarts", "sdarts-rs", "drnas", "darts-minus",
           "sdarts-adv")

_CHILD = r"""
import json, sys, time, torch
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot  # imported before the baseline: the plots are not the search's memory
from fastdarts.data import load_dataset
from fastdarts.search import SearchConfig, run_search
from fastdarts.genotypes import genotype_to_dict
args = json.loads(sys.argv[1])
data = load_dataset("digits")
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
cuda = args["device"] == "cuda"
if cuda:
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
start = time.perf_counter()
r = run_search(SearchConfig(**args["config"]), data=data, log=lambda *a: None)
elapsed = time.perf_counter() - start
peak = (torch.cuda.max_memory_allocated() if cuda else status("VmHWM:")) - base
print(json.dumps({"test_accuracy": r.test_accuracy, "genotype": genotype_to_dict(r.genotype),
                  "final_val_accuracy": r.history[-1]["val_acc"], "search_s": elapsed,
                  "peak_bytes": peak}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--space", default="darts")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", required=True, help="path prefix of the .json and .md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            config = {"algo": method, "space": args.space, "dataset": "digits",
                      "epochs": args.epochs, "layers": args.layers, "device": args.device,
                      "seed": args.seed, "progress": False, "run_dir": f"{tmp}/{method}"}
            out = subprocess.run([sys.executable, "-c", _CHILD,
                                  json.dumps({"config": config, "device": args.device})],
                                 env=probe_env(ROOT), capture_output=True, text=True, check=True)
            row = {"method": method, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{method}: test {row['test_accuracy']:.1f}%, {row['search_s']:.0f} s, "
                  f"{row['peak_bytes'] / 2**20:.1f} MiB", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    meta = {"date": datetime.date.today().isoformat(), "commit": commit, "space": args.space,
            "epochs": args.epochs, "layers": args.layers, "device": args.device,
            "seed": args.seed, "dataset": "digits"}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Methods on digits ({args.space} space, {args.epochs} epochs, {args.layers} "
             f"cells, seed {args.seed}, {args.device}); commit {commit}, {meta['date']}", "",
             "| method | supernet test acc. | final val acc. | search time | memory added "
             "by the search | genotype |", "|---|---|---|---|---|---|"]
    for r in rows:
        g = r["genotype"]
        cells = "; ".join(f"{k}: " + " ".join(f"{op}~{i}" for op, i in g[k])
                          for k in ("normal", "reduce") if k in g) or g.get("arch_str", "")
        lines.append(f"| {r['method']} | {r['test_accuracy']:.1f}% | "
                     f"{r['final_val_accuracy']:.1f}% | {r['search_s']:.0f} s | "
                     f"{r['peak_bytes'] / 2**20:.1f} MiB | {cells} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
