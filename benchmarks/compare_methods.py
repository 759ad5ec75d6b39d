"""Every method on the same search budget on the embedded digits data set (genotype, supernet
test accuracy, search time), and the memory of one search iteration (architecture step +
weight step) of each method's supernet at CIFAR size, one fresh process per method.

    python benchmarks/compare_methods.py --epochs 3 --layers 3 --out benchmarks/results/X

Memory: C=12 (divisible by DrNAS's K=6 and 4), 8 cells, 3x32x32 inputs, batch 16, first
stage of each method; one iteration to warm up, then the peak of the next. On the CPU the
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) minus the
resident set before the iteration, every allocation of 4 KiB or more its own mapping
(`memory_probe.probe_env`) so that freed tensors leave the resident set; on a GPU
torch.cuda.max_memory_allocated minus the allocation before it. Writes X.json and X.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
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
from fastdarts.search import SearchConfig, build_search, run_search, search_step
from fastdarts.genotypes import genotype_to_dict
args = json.loads(sys.argv[1])
data = load_dataset("digits")
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
cuda = args["device"] == "cuda"
start = time.perf_counter()
r = run_search(SearchConfig(**args["config"]), data=data, log=lambda *a: None)
elapsed = time.perf_counter() - start

# One iteration at CIFAR size: warm up, then measure.
cfg = SearchConfig(algo=args["config"]["algo"], space=args["config"]["space"],
                   dataset="cifar10", init_channels=12, layers=8, batch_size=16,
                   arch_warmup_epochs=0, device=args["device"]).resolved()
device = torch.device(args["device"])
algo, model, training = build_search(cfg, 10, 3, device)
fmt = torch.channels_last
def batch():
    return (torch.randn(16, 3, 32, 32, device=device).contiguous(memory_format=fmt),
            torch.randint(0, 10, (16,), device=device))
search_step(algo, model, training, batch(), batch(), cfg.lr, cfg.grad_clip)
b, v = batch(), batch()
if cuda:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
t0 = time.perf_counter()
search_step(algo, model, training, b, v, cfg.lr, cfg.grad_clip)
if cuda:
    torch.cuda.synchronize()
step_s = time.perf_counter() - t0
peak = (torch.cuda.max_memory_allocated() if cuda else status("VmHWM:")) - base
trained = sum(p.numel() for p in training.params)
print(json.dumps({"test_accuracy": r.test_accuracy, "genotype": genotype_to_dict(r.genotype),
                  "final_val_accuracy": r.history[-1]["val_acc"], "search_s": elapsed,
                  "iteration_peak_bytes": peak, "iteration_s": step_s,
                  "trained_weights": trained}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--space", default="darts")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", required=True, help="path prefix of the .json and .md")
    args = parser.parse_args()
    commit = os.environ.get("FASTDARTS_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
        text=True).stdout.strip()  # the code that runs (a GPU copy has no .git)
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
            print(f"{method}: test {row['test_accuracy']:.1f}%, {row['search_s']:.0f} s; "
                  f"iteration {row['iteration_s']:.1f} s, "
                  f"{row['iteration_peak_bytes'] / 2**20:.1f} MiB", flush=True)
    meta = {"date": datetime.date.today().isoformat(), "commit": commit, "space": args.space,
            "epochs": args.epochs, "layers": args.layers, "device": args.device,
            "seed": args.seed, "dataset": "digits"}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Methods on digits ({args.space} space, {args.epochs} epochs, {args.layers} "
             f"cells, seed {args.seed}, {args.device}); commit {commit}, {meta['date']}", "",
             "Iteration columns: one architecture + weight step at CIFAR size (C=12, 8 cells, "
             "32x32, batch 16, first stage), peak memory over the step and its time.", "",
             "| method | supernet test acc. | final val acc. | search time | iteration peak "
             "| iteration time | trained weights | genotype |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["genotype"]
        cells = "; ".join(f"{k}: " + " ".join(f"{op}~{i}" for op, i in g[k])
                          for k in ("normal", "reduce") if k in g) or g.get("arch_str", "")
        lines.append(f"| {r['method']} | {r['test_accuracy']:.1f}% | "
                     f"{r['final_val_accuracy']:.1f}% | {r['search_s']:.0f} s | "
                     f"{r['iteration_peak_bytes'] / 2**20:.1f} MiB | {r['iteration_s']:.1f} s | "
                     f"{r['trained_weights']:,} | {cells} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
