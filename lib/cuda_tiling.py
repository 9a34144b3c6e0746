"""How the CUDA kernels' blocks tile an output matrix, drawn, and how much launched work falls past its edges.

``parbp.cuda`` launches every matrix product (forward, backward, update) as a grid of blocks of ``tile`` ×
``tile`` threads, each thread owning ``reg_block`` × ``reg_block`` outputs, so one block covers a square of
``tile · reg_block`` outputs. ``draw_tiling`` draws that layout small enough to read (notebook 04);
``launched_work`` and ``idle_share`` turn ``parbp.cuda.launch_geometry``'s rows into the share of launched
work that lands outside the matrix (masked threads still run the inner loop, on zeros).
"""
from __future__ import annotations

import numbers

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle


def blocks_along(n: int, per: int) -> int:
    """Blocks of ``per`` outputs needed to cover ``n`` (the last one may stick out)."""
    return -(-n // per)


def draw_tiling(tile: int = 4, reg_block: int = 2, rows: int = 13, cols: int = 21):
    """Three panels: (a) the grid of blocks over a ``rows`` × ``cols`` output, the slots past its edges
    hatched; (b) one block, coloured by the thread that owns each output; (c) how the forward product's
    tile of A goes into shared memory transposed. Small sizes keep it legible; the kernels' default is
    tile 16, reg_block 4 (64 × 64 outputs per block)."""
    for name, value in dict(tile=tile, reg_block=reg_block, rows=rows, cols=cols).items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4), gridspec_kw={"width_ratios": [1.4, 1, 1.3]})
    _draw_grid(axes[0], tile * reg_block, rows, cols)
    _draw_block(axes[1], tile, reg_block)
    _draw_transposed_load(axes[2], tile, reg_block)
    fig.tight_layout()
    return fig


def _draw_grid(ax, per: int, rows: int, cols: int) -> None:
    gx, gy = blocks_along(cols, per), blocks_along(rows, per)
    for by, bx in np.ndindex(gy, gx):
        ax.add_patch(Rectangle((bx * per, by * per), per, per, fill=False, lw=2, ec="k"))
        ax.text(bx * per + per / 2, by * per + per / 2, f"block\n({by},{bx})", ha="center", va="center", fontsize=9)
    ax.add_patch(Rectangle((0, 0), cols, rows, color="tab:blue", alpha=0.25, lw=0))
    # the slots past the right and the bottom edge: launched, masked, idle
    ax.add_patch(Rectangle((cols, 0), gx * per - cols, gy * per, hatch="//", fill=False, ec="tab:red", lw=0))
    ax.add_patch(Rectangle((0, rows), cols, gy * per - rows, hatch="//", fill=False, ec="tab:red", lw=0))
    ax.set(xlim=(0, gx * per), ylim=(gy * per, 0), aspect="equal", xlabel="output column n (units)",
           ylabel="output row m (examples)",
           title=f"(a) grid over a {rows}×{cols} output: blue computed,\nhatched = idle slots past the edge")


def _draw_block(ax, tile: int, reg_block: int) -> None:
    """Strided ownership: thread (ty, tx) owns outputs (ty + i·tile, tx + j·tile)."""
    per = tile * reg_block
    colors = plt.cm.tab20(np.linspace(0, 1, tile * tile))
    labelled = (1 % tile, 2 % tile)
    for i, j in np.ndindex(per, per):
        ty, tx = i % tile, j % tile
        ax.add_patch(Rectangle((j, i), 1, 1, color=colors[ty * tile + tx], alpha=0.85))
        if (ty, tx) == labelled:
            ax.text(j + 0.5, i + 0.55, f"{i // tile},{j // tile}", ha="center", va="center", fontsize=8, weight="bold")
    ax.set(xlim=(0, per), ylim=(per, 0), aspect="equal", xticks=range(0, per + 1, tile),
           yticks=range(0, per + 1, tile),
           title=f"(b) one block: {tile}×{tile} threads, each owns {reg_block}×{reg_block}\n"
                 f"outputs at stride {tile} (thread {labelled} labelled i,j)")
    ax.grid(True, color="k", lw=1.5)


def _cells(ax, x0, y0, w, h) -> None:
    for i, j in np.ndindex(h, w):
        ax.add_patch(Rectangle((x0 + j, y0 + i), 1, 1, fill=False, ec="0.6", lw=0.6))
    ax.add_patch(Rectangle((x0, y0), w, h, fill=False, lw=2))


def _draw_transposed_load(ax, tile: int, reg_block: int) -> None:
    """The forward product's tile of A (``per`` rows m, ``tile`` columns k) lies row-major, along k, in global
    memory; consecutive threads read along k (coalesced) and store it transposed, padded by one column."""
    per = tile * reg_block
    _cells(ax, 0, 0, tile, per)
    ax.add_patch(Rectangle((0, 0), tile, 1, color="tab:green", alpha=0.35))
    ax.text(tile / 2, -0.3, f"A's tile, global memory\n({per} rows m × {tile} k)", ha="center", va="bottom", fontsize=9)
    ax.text(0, per + 1.0, f"green: threads 0..{tile - 1} read one row,\nconsecutive k: coalesced", fontsize=8,
            color="tab:green", va="top")
    x0, y0 = tile + 3, 1
    _cells(ax, x0, y0, per, tile)
    ax.add_patch(Rectangle((x0 + per, y0), 1, tile, color="0.75"))
    ax.text(x0 + per + 0.5, y0 + tile / 2, "pad", ha="center", va="center", rotation=90, fontsize=8)
    ax.add_patch(Rectangle((x0, y0), 1, tile, color="tab:green", alpha=0.35))
    ax.add_patch(Rectangle((x0, y0), per, 1, color="tab:blue", alpha=0.3))
    ax.text(x0 + (per + 1) / 2, y0 - 0.3, f"As, shared memory ({tile} × {per}+1)", ha="center", va="bottom",
            fontsize=9)
    ax.annotate("", xy=(x0, y0 + tile / 2), xytext=(tile, 0.5),
                arrowprops=dict(arrowstyle="->", color="tab:green", lw=1.5))
    ax.text(x0, y0 + tile + 0.7, "stored transposed: the row becomes a column;\nthe pad spreads its k's over the banks",
            fontsize=8, color="tab:green", va="top")
    ax.text(x0, y0 + tile + 2.9, "inner loop, step k: all threads read row k (blue),\n"
            f"a[i] = As[k, ty + i·{tile}], b[j] = Bs[k, tx + j·{tile}],\nacc[i, j] += a[i]·b[j]", fontsize=8,
            color="tab:blue", va="top")
    ax.set(xlim=(-0.5, x0 + per + 1.5), ylim=(per + 3, -2.2), aspect="equal", xticks=[], yticks=[],
           title="(c) forward: A's tile goes into shared\nmemory transposed (eq. 9's trick)")
    ax.axis("off")


def launched_work(geometry: pd.DataFrame) -> pd.DataFrame:
    """``launch_geometry``'s rows with ``launched``: the flops the whole grid runs, idle slots included
    (a masked thread still runs the inner loop, on zeros), i.e. useful flops / (1 - idle)."""
    if missing := {"flops", "idle"} - set(geometry.columns):
        raise ValueError(f"launched_work needs parbp.cuda.launch_geometry's columns; missing {sorted(missing)}")
    return geometry.assign(launched=geometry.flops / (1 - geometry.idle))


def idle_share(geometry: pd.DataFrame, by=("net", "batch")) -> pd.Series:
    """The share of the launched work that is idle, per group of launches (by default one step of a net at
    a batch size)."""
    work = launched_work(geometry).groupby(list(by))[["flops", "launched"]].sum()
    return 1 - work.flops / work.launched
