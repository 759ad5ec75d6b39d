"""What a search leaves for a person to read: a JSON-lines log and a plot of the
architecture weights of every edge over the epochs."""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["JsonlLog", "plot_arch_weights", "plot_final_weights", "decision_margins",
           "margin_summary"]


class JsonlLog:
    """Append-only JSON-lines file; `truncate_after(epoch)` drops records of epochs that a
    resumed run will redo (written after the last checkpoint, before a crash)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        kept = [r for r in self.records() if r.get("epoch", -1) <= epoch]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)


def decision_margins(weights: dict, exclude_none: bool = True) -> dict[str, list[float]]:
    """Per architecture tensor, per edge: how decided the edge is, the best op's mixing
    weight minus the runner-up's (`none` left out where the genotype leaves it out: the
    DARTS spaces; NAS-Bench-201's derivation keeps it). `weights` is a log record's
    `weights` (`{name: {"ops", "values", ...}}`)."""
    out = {}
    for name, meta in weights.items():
        margins = []
        for ops, values in zip(meta["ops"], meta["values"]):
            kept = sorted((v for op, v in zip(ops, values)
                           if not (exclude_none and op == "none")), reverse=True)
            margins.append(round(kept[0] - kept[1], 6) if len(kept) > 1 else 1.0)
        out[name] = margins
    return out


def margin_summary(margins: dict[str, list[float]]) -> dict[str, float]:
    """min / median / max of the edges' decision margins over every tensor."""
    values = sorted(v for per_edge in margins.values() for v in per_edge)
    return {"min": values[0], "median": values[len(values) // 2], "max": values[-1]}


def plot_arch_weights(history: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Plot, for every edge of every architecture tensor, each op's mixing weight per epoch.

    `history` holds one record per epoch with `weights`: {tensor name: {"edges": [...],
    "ops": [[...] per edge], "values": [[...] per edge]}}, and for PC-DARTS `edge_weights`:
    {tensor name: [one value per edge]}, drawn dashed on each edge's panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("history is empty: nothing to plot")
    epochs = [r["epoch"] for r in history]
    tensors = list(history[-1]["weights"])
    ncols = 7
    layout = []
    for name in tensors:
        n_edges = len(history[-1]["weights"][name]["edges"])
        layout.append((name, n_edges, -(-n_edges // ncols)))
    nrows = sum(rows for _, _, rows in layout)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.2 * nrows + 0.8),
                             squeeze=False, sharex=True, sharey=True)
    # one y range for every panel, fitted to the data: near-uniform weights (an undecided
    # search) would otherwise be flat lines on a 0-1 axis
    every = [v for r in history for meta in r["weights"].values() for row in meta["values"]
             for v in row]
    every += [v for r in history for e in r.get("edge_weights", {}).values() for v in e]
    low, high = min(every), max(every)
    pad = max(0.05 * (high - low), 1e-3)
    margins = history[-1].get("margins") or decision_margins(history[-1]["weights"])
    row = 0
    handles = {}
    for name, n_edges, rows in layout:
        meta = history[-1]["weights"][name]
        for e in range(rows * ncols):
            ax = axes[row + e // ncols][e % ncols]
            if e >= n_edges:
                ax.axis("off")
                continue
            for k, op in enumerate(meta["ops"][e]):
                values = [r["weights"][name]["values"][e][k] for r in history]
                (line,) = ax.plot(epochs, values, label=op, linewidth=1.2)
                handles.setdefault(op, line)
            if name in history[-1].get("edge_weights", {}):
                values = [r["edge_weights"][name][e] for r in history]
                (line,) = ax.plot(epochs, values, "k--", label="edge weight", linewidth=1.0)
                handles.setdefault("edge weight", line)
            ax.set_title(f"{name} {meta['edges'][e]}  margin {margins[name][e]:.3f}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_ylim(low - pad, high + pad)
        row += rows
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=min(len(handles), 8), fontsize=8)
    fig.suptitle(title or "architecture weights per edge over epochs", fontsize=10)
    fig.supxlabel("epoch", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def plot_final_weights(record: dict, path: str | os.PathLike, title: str = "") -> None:
    """A heatmap per architecture tensor of the last epoch's mixing weights: one row per
    edge (with its decision margin), one column per op, each cell's value written in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tensors = record["weights"]
    margins = record.get("margins") or decision_margins(tensors)
    fig, axes = plt.subplots(1, len(tensors), squeeze=False,
                             figsize=(5.2 * len(tensors), 0.34 * max(
                                 len(m["edges"]) for m in tensors.values()) + 1.8))
    for ax, (name, meta) in zip(axes[0], tensors.items()):
        ops = meta["ops"][0]
        if any(o != ops for o in meta["ops"]):  # S1-S4: per-edge op lists, drawn by position
            ops = [f"op {k}" for k in range(len(ops))]
        values = meta["values"]
        image = ax.imshow(values, cmap="viridis", aspect="auto")
        for e, row in enumerate(values):
            for k, v in enumerate(row):
                ax.text(k, e, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < (min(row) + max(row)) / 2 else "black")
        ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(values)), [f"{edge}  ({m:.3f})" for edge, m in
                                           zip(meta["edges"], margins[name])], fontsize=7)
        ax.set_title(f"{name}: final mixing weights (edge margin)", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title or "final mixing weights", fontsize=10)
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
