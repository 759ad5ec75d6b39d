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
             f"date {report.get('datetime')}"]
    def of_kind(kind):
        return {g: r for g, r in groups.items() if r[0]["extra_info"].get("kind") == kind}
    step_groups, second_order = of_kind("supernet_step"), of_kind("second_order_step")
    graphed, search_steps = of_kind("supernet_step_graph"), of_kind("search_step")
    if second_order:
        lines += _second_order_table(second_order)
    if search_steps:
        lines += _search_step_table(search_steps)
    groups = {g: r for g, r in groups.items()
              if g not in second_order and g not in graphed and g not in search_steps}
    if len(step_groups) < len(groups):
        lines += ["", "| group | backend | median (us) | p20-p80 (us) | speed-up vs reference | "
                  "GB/s | peak MiB | energy mJ/call |", "|---|---|---|---|---|---|---|---|"]
    for group in sorted(groups):
        if group in step_groups:
            continue
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
    if step_groups:
        lines += ["", "| supernet | mode | backend | batch | step (s) | time vs reference | "
                  "time vs reference, interleaved | saved MiB/image | saved vs reference | peak MiB | peak vs reference | "
                  "BN updates/BN | energy mJ/step | batch in 80 GiB (projected) | "
                  "CPU steal (row / A/B) | host work per step: dispatcher ops / GPU launches "
                  "(estimate) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for group in sorted(step_groups):
            rows = step_groups[group]
            # a run of only some modes (-k) has no reference row: ratios are left blank
            ref = next((b["extra_info"] for b in rows if b["extra_info"]["mode"] == "reference"),
                       None)

            def ratio(fmt, key_ref, key, e, ref=ref):
                return "" if ref is None else fmt(ref[key_ref], e[key])
            for b in rows:
                e = b["extra_info"]
                energy = e.get("energy_mJ_per_step")
                lines.append(
                    f"| {e['space']} | {e['mode']} | {e.get('backend', 'auto')} | {e['batch']} | "
                    f"{e['median_s']:.3f} | "
                    f"{ratio(lambda r, v: f'{v / r:.2f}x', 'median_s', 'median_s', e)} | "
                    f"{_interleaved(e)} | "
                    f"{e['saved_MiB_per_image']:.2f} | "
                    f"{ratio(lambda r, v: f'1/{r / v:.1f}', 'saved_MiB_per_image', 'saved_MiB_per_image', e)} | "
                    f"{e['peak_MiB']:.1f} | "
                    f"{ratio(lambda r, v: f'1/{r / max(v, 1e-9):.1f}', 'peak_MiB', 'peak_MiB', e)} | "
                    f"{e['bn_batches_tracked_per_bn']:.2f} (of {e['probe_steps']} steps) | "
                    f"{'' if energy is None else f'{energy:.0f}'} | "
                    f"{e.get('projected_batch_80GiB', '')} | {_steal(e)} | "
                    f"{_host(e, ref)} |")
    if graphed:
        lines += _graph_table(graphed)
    return "\n".join(lines) + "\n"


def _search_step_table(groups) -> list[str]:
    """bench_search_step: a whole search iteration per method, memory mode and eager or
    CUDA graph, against the eager original of the same method."""
    lines = ["", "| method | memory | step | batch | step (s) | time vs eager reference |",
             "|---|---|---|---|---|---|"]
    for group in sorted(groups):
        for b in groups[group]:
            e = b["extra_info"]
            ratio = e.get("time_vs_eager_reference")
            lines.append(
                f"| {e['method']} | {e['memory']} | {'CUDA graph' if e['graphed'] else 'eager'} "
                f"| {e['batch']} | {e['median_s']:.3f} | "
                f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    return lines


def _graph_table(groups) -> list[str]:
    """bench_mixed_op's CUDA-graph rows: each mode's replayed step against the reference
    replayed the same way and against the eager reference, from the interleaved run."""
    lines = ["", "Steps replayed as CUDA graphs (`fastdarts.graphs.CapturedStep`):", "",
             "| supernet | mode | backend | batch | step (s) | time vs graphed reference, "
             "interleaved | time vs eager reference, interleaved | peak MiB (with the "
             "graph's pool) | peak vs graphed reference | energy mJ/step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for group in sorted(groups):
        infos = [b["extra_info"] for b in groups[group]]
        ref = next((e for e in infos if e["mode"] == "reference"), None)
        for e in infos:
            energy = e.get("energy_mJ_per_step")
            peak = "" if ref is None else f"1/{ref['peak_MiB'] / max(e['peak_MiB'], 1e-9):.1f}"
            lines.append(
                f"| {e['space']} | {e['mode']} | {e['backend']} | {e['batch']} | "
                f"{e['median_s']:.3f} | {e['time_vs_graphed_reference_interleaved']:.2f}x | "
                f"{e['time_vs_eager_reference_interleaved']:.2f}x | {e['peak_MiB']:.1f} | "
                f"{peak} | {'' if energy is None else f'{energy:.0f}'} |")
    return lines


def _interleaved(e: dict) -> str:
    """The A/B ratio of bench_mixed_op (absent from older result files)."""
    r = e.get("time_vs_reference_interleaved")
    return "" if r is None else f"{r:.2f}x (median of {e['ab_rounds']})"


def _host(e: dict, ref) -> str:
    """Dispatcher ops and estimated CUDA launches of one step (memory_probe.host_work), with
    their ratio to the reference row."""
    h = e.get("host_work")
    if h is None:
        return ""
    r = None if ref is None else ref.get("host_work")
    rel = (lambda k: "" if r is None else f" ({h[k] / r[k]:.2f}x)")
    return (f"{h['aten_ops']:,}{rel('aten_ops')} / "
            f"{h['cuda_launches_estimate']:,}{rel('cuda_launches_estimate')}")


def _steal(e: dict) -> str:
    """CPU time taken by the hypervisor while the row (and the A/B run) were timed."""
    a, b = e.get("cpu_steal"), e.get("cpu_steal_interleaved")
    return "" if a is None else f"{a:.0%} / {b:.0%}" if b is not None else f"{a:.0%}"


def _second_order_table(groups) -> list[str]:
    lines = ["", "| row | supernet memory mode | batch | step (s) | time vs copy | peak MiB | "
             "peak vs copy | HVP operations (kernel calls + bookkeeping) | weight tensors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for group in sorted(groups):
        infos = [b["extra_info"] for b in groups[group]]
        ref = next((e for e in infos if e["row"] == "copy"), None)
        for e in infos:
            time = "" if ref is None else f"{e['median_s'] / ref['median_s']:.2f}x"
            peak = "" if ref is None else f"1/{ref['peak_MiB'] / max(e['peak_MiB'], 1e-9):.1f}"
            lines.append(
                f"| {e['row']} | {e['mode']} | {e['batch']} | {e['median_s']:.3f} | {time} | "
                f"{e['peak_MiB']:.1f} | {peak} | {e['hvp_operations']} "
                f"({e['hvp_kernel_calls']} + {e['bookkeeping_ops']}) | "
                f"{e['num_weight_tensors']} |")
    return lines


if __name__ == "__main__":
    sys.stdout.write(summarize(sys.argv[1]))
