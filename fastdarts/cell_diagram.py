"""Pictures of a DARTS genotype's two cells, as the original's visualize.py draws them:
the cell's inputs c_{k-2} and c_{k-1}, its intermediate nodes 0..n-1 (each the sum of two
ops, one arrow per op, labelled with it) and the output c_{k} (the concat of `concat`).

`draw_genotype(genotype, stem)` writes `<stem>_normal` and `<stem>_reduction` as a
Graphviz `.dot` file (always), `.png` and `.svg`: rendered by Graphviz's `dot` when the
program is installed, else drawn with matplotlib, so the picture always comes out.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .genotypes import DartsGenotype

__all__ = ["cell_dot", "draw_genotype"]


def _inputs_of(ops) -> list[tuple[str, int, int]]:
    """(op, source state, node) per op; states 0 and 1 are the cell's inputs."""
    return [(name, index, n // 2) for n, (name, index) in enumerate(ops)]


def _state_name(index: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(index, str(index - 2))


def cell_dot(ops, concat, title: str) -> str:
    """The Graphviz source of one cell."""
    steps = len(ops) // 2
    lines = [f'digraph "{title}" {{', '  rankdir=LR; node [style=filled, fontname=Helvetica];',
             f'  label="{title}"; labelloc=t;',
             '  "c_{k-2}" [fillcolor=darkseagreen2]; "c_{k-1}" [fillcolor=darkseagreen2];']
    lines += [f'  "{i}" [fillcolor=lightblue, shape=box];' for i in range(steps)]
    lines.append('  "c_{k}" [fillcolor=palegoldenrod];')
    for name, index, node in _inputs_of(ops):
        lines.append(f'  "{_state_name(index)}" -> "{node}" [label="{name}", '
                     f'fillcolor=gray];')
    lines += [f'  "{c - 2}" -> "c_{{k}}" [fillcolor=gray];' for c in concat if c >= 2]
    lines += [f'  "{_state_name(c)}" -> "c_{{k}}" [fillcolor=gray];' for c in concat if c < 2]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _matplotlib_cell(ops, concat, title: str, stem: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(ops) // 2
    where = {"c_{k-2}": (0.0, 1.0), "c_{k-1}": (0.0, -1.0), "c_{k}": (steps + 1.5, 0.0)}
    for i in range(steps):
        where[str(i)] = (1.0 + i, 1.6 * ((-1) ** i) * (0.5 + 0.25 * (i // 2)))
    fig, ax = plt.subplots(figsize=(2.2 * (steps + 2), 4))
    for name, index, node in _inputs_of(ops):
        (x0, y0), (x1, y1) = where[_state_name(index)], where[str(node)]
        ax.annotate("", (x1, y1), (x0, y0),
                    arrowprops=dict(arrowstyle="->", color="0.35", shrinkA=14, shrinkB=14))
        ax.text(x0 + 0.55 * (x1 - x0), y0 + 0.55 * (y1 - y0), name, fontsize=8, ha="center",
                va="center", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="0.8"))
    for c in concat:
        (x0, y0), (x1, y1) = where[_state_name(c)], where["c_{k}"]
        ax.annotate("", (x1, y1), (x0, y0),
                    arrowprops=dict(arrowstyle="->", color="0.7", shrinkA=14, shrinkB=14))
    colour = {"c_{k-2}": "#b4eeb4", "c_{k-1}": "#b4eeb4", "c_{k}": "#eee8aa"}
    for label, (x, y) in where.items():
        ax.text(x, y, f"${label}$" if label.startswith("c_") else label, ha="center",
                va="center", fontsize=11,
                bbox=dict(boxstyle="round,pad=0.4", fc=colour.get(label, "#add8e6"), ec="0.3"))
    ax.set_xlim(-0.6, steps + 2.1)
    ax.set_ylim(-2.4, 2.4)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(stem.with_suffix(suffix), dpi=130)
    plt.close(fig)


def draw_genotype(genotype: DartsGenotype, stem: str | os.PathLike) -> list[Path]:
    """Write both cells' pictures next to `stem` (module docstring); returns the files."""
    stem = Path(stem)
    written = []
    for kind, ops, concat in (("normal", genotype.normal, genotype.normal_concat),
                              ("reduction", genotype.reduce, genotype.reduce_concat)):
        base = stem.with_name(f"{stem.name}_{kind}")
        dot_file = base.with_suffix(".dot")
        dot_file.write_text(cell_dot(ops, list(concat), f"{kind} cell"))
        written.append(dot_file)
        rendered = False
        if shutil.which("dot"):
            try:
                for fmt in ("png", "svg"):
                    subprocess.run(["dot", f"-T{fmt}", str(dot_file), "-o",
                                    str(base.with_suffix(f".{fmt}"))], check=True,
                                   capture_output=True, timeout=60)
                rendered = True
            except (OSError, subprocess.SubprocessError):
                rendered = False  # a broken Graphviz install: draw it ourselves
        if not rendered:
            _matplotlib_cell(ops, list(concat), f"{kind} cell", base)
        written += [base.with_suffix(".png"), base.with_suffix(".svg")]
    return written
