"""The roofline of one SGD step: the bytes it must move, the bandwidth that moves them, and the roof they set.

A core computes no faster than memory feeds it. A step's *arithmetic intensity* is its flops
(``parbp.nets.flops_per_step``) over the bytes it must move between memory and the core; the machine's
roof is ``min(peak flop rate, bandwidth × intensity)``. The per-example form of backpropagation re-reads
every weight for every example (matrix-vector products, about half a flop per byte whatever the batch);
the minibatch form reads each weight once per product and uses it for all B examples, so its intensity
grows with B until the activations dominate.
"""
from __future__ import annotations

import timeit

import numpy as np
import pandas as pd

from .nets import flops_per_step

FLOAT32 = 4  # bytes per value: every trainer of the roofline runs in float32


def bytes_moved(sizes, batch: int, per_example: bool) -> int:
    """The float32 bytes one step must move at least: every operand read once, every output written once. Per
    layer: the forward product, the delta product (none for the first layer: the input needs no delta) and the
    gradient. The matrix-vector form (``per_example``) does all of it once per example, weights included; the
    minibatch form reads and writes each weight-sized array once per step."""
    if int(batch) < 1:
        raise ValueError(f"batch must be a positive number of examples, got {batch}")
    n, m = np.array(sizes[:-1], dtype=np.int64), np.array(sizes[1:], dtype=np.int64)
    passes = np.where(np.arange(len(n)) > 0, 4, 3)  # read W forward, read W backward, read and write the gradient
    total = batch * (passes * n * m + 2 * (n + m)) if per_example else passes * n * m + batch * (3 * n + 4 * m)
    return FLOAT32 * int(total.sum())


def intensity(sizes, batch: int, per_example: bool) -> float:
    """Flop per byte of one step: ``flops_per_step`` over ``bytes_moved``."""
    return flops_per_step(sizes, batch) / bytes_moved(sizes, batch, per_example)


def stream_bandwidth(n_bytes: int = 128 * 2**20, repeats: int = 5) -> float:
    """GB/s of the fastest of ``repeats`` copies of ``n_bytes`` (read + write counted): the usual stand-in
    for a core's memory bandwidth. The array is far larger than the caches, so the copy streams from memory."""
    if n_bytes < FLOAT32 or repeats < 1:
        raise ValueError(f"need n_bytes >= {FLOAT32} and repeats >= 1, got n_bytes={n_bytes}, repeats={repeats}")
    src = np.ones(n_bytes // FLOAT32, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / min(timeit.repeat(lambda: np.copyto(dst, src), number=1, repeat=repeats)) / 1e9


def roof(sgemm_gflops: float, bandwidth_gbs: float, flop_per_byte) -> np.ndarray:
    """The attainable GFLOP/s at each intensity: the compute roof or the memory slope, whichever is lower."""
    return np.minimum(sgemm_gflops, bandwidth_gbs * np.asarray(flop_per_byte, dtype=float))


def roof_table(sgemm_gflops: float, bandwidth_gbs: float, lo: float = 10**-1.5, hi: float = 1e3) -> pd.DataFrame:
    """The roof sampled on a log grid of intensities, as the figure's CSV keeps it."""
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    return pd.DataFrame({"flop_per_byte": x, "gflops_roof": roof(sgemm_gflops, bandwidth_gbs, x)})


def plot(speed: pd.DataFrame, sgemm_gflops: float, bandwidth_gbs: float, net: str):
    """The measured steps (columns impl, batch, flop_per_byte, gflops) against the roof, one marker per form.

    The per-example points share one intensity whatever the batch, so their labels are stacked to the
    upper left, each with a line to its point; the minibatch points are far apart and labelled beside them.
    """
    import matplotlib.pyplot as plt

    from .results import plain_log_ticks

    fig, ax = plt.subplots(figsize=(6, 4.2))
    line = roof_table(sgemm_gflops, bandwidth_gbs)
    ax.plot(line.flop_per_byte, line.gflops_roof, color="0.3", lw=2, label="roof: min(sgemm, bandwidth × intensity)")
    for impl, marker in zip(speed.impl.unique(), "osD^"):
        rows = speed[speed.impl == impl].sort_values("gflops", ascending=False)
        points = ax.plot(rows.flop_per_byte, rows.gflops, marker, ms=8, label=impl)[0]
        spread = rows.flop_per_byte.max() / rows.flop_per_byte.min() < 3  # labels beside the points would collide
        color = points.get_color()
        for k, r in enumerate(rows.itertuples()):
            place = dict(xytext=(rows.flop_per_byte.min() / 6, rows.gflops.max() * 1.45 ** (len(rows) - k)),
                         ha="right", va="center", arrowprops=dict(arrowstyle="-", color=color, lw=0.6, shrinkB=4)) \
                if spread else dict(textcoords="offset points", xytext=(7, -13))
            ax.annotate(f"B={int(r.batch):,}", (r.flop_per_byte, r.gflops), fontsize=9, color=color, **place)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (flop / byte, model)",
           ylabel="GFLOP/s (measured)", title=f"Net-{net}, one core: the two serial forms")
    plain_log_ticks(ax)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
