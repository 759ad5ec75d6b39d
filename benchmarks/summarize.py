"""Turn a pytest-benchmark JSON into a markdown table with ratios against the reference row
of the same group (same run): `python benchmarks/summarize.py results/X.json > results/X.md`."""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def summarize(path: str) -> str:
    with open(path) as f:
        report = json.load(f)
    machine = report["machine_info"]
    groups = defaultdict(list)
    for bench in report["benchmarks"]:
        groups[bench["group"]].append(bench)
    lines = [f"# {path}", "",
             f"device: {machine.get('device')}, driver {machine.get('driver')}, torch "
             f"{machine.get('torch')} (CUDA {machine.get('torch_cuda')}), triton "
             f"{machine.get('triton')}, commit {machine.get('git_commit')}, "
             f"date {report.get('datetime')}", "",
             "| group | backend | median (us) | p20-p80 (us) | speed-up vs reference | GB/s | "
             "peak MiB | energy mJ/call |",
             "|---|---|---|---|---|---|---|---|"]
    for group in sorted(groups):
        rows = groups[group]
        ref = next((b for b in rows if b["extra_info"].get("backend") == "reference"), None)
        for b in sorted(rows, key=lambda b: b["extra_info"]["median_s"]):
            e = b["extra_info"]
            speedup = (ref["extra_info"]["median_s"] / e["median_s"]) if ref else float("nan")
            energy = e.get("energy_mJ_per_call")
            lines.append(
                f"| {group} | {e['backend']} | {e['median_s'] * 1e6:.1f} | "
                f"{e['p20_s'] * 1e6:.1f}-{e['p80_s'] * 1e6:.1f} | {speedup:.2f}x | "
                f"{e['GB_per_s']:.1f} | {e.get('peak_MiB', float('nan')):.1f} | "
                f"{'' if energy is None else f'{energy:.2f}'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(summarize(sys.argv[1]))
