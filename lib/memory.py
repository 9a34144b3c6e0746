"""The memory footprint of training (seed 002's "VGG memory footprint" slides), per trainer and network.

Seed 002 counts what training must keep: the weights, every layer's outputs from the forward pass (the
backward pass reads them), their gradients, the per-weight gradients, optionally momentum, all activations
times the minibatch size. Here each trainer gets its own formula, read from its code, because they keep
different things: serial-example one example's vectors (no B term); the matrix trainers the minibatch's
activations and deltas but no gradient (the update W ← W − lr·AᵀΔ is one GEMM into W), + one weight-sized
partial sum per worker with update="partials"; numpy and reference every layer's gradient and the temporaries
of their expressions, phase by phase; the GPU trainers, by formula only, their device buffers.

``footprint(trainer, sizes, B)`` lists the terms in bytes; ``measure_peak`` measures the same thing: the
peak of the bytes a trainer holds during one step (its weights, the minibatch and everything the step
allocates), traced with ``tracemalloc``, to which numpy reports every array it allocates. BLAS's own
scratch (OpenBLAS allocates it once per thread, outside numpy) is not the trainer's and is not counted.
"""
from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import trainers
from .cli import check_positive_int
from .cuda import reduce_blocks
from .nets import layer_sizes, n_params

#: numpy operates in place on a temporary operand (``t * A`` writes into ``t``) from this size up
#: (NPY_MIN_ELIDE_BYTES in numpy's temp_elide.c); below it every operator allocates a new array
ELIDE_BYTES = 256 * 1024

#: trainers whose allocations numpy reports to tracemalloc (the library baselines allocate through
#: torch's or PyTensor's own allocators and the GPU trainers on the device)
CPU_TRAINERS = tuple(n for n in trainers.names()
                     if trainers.get(n).device == "cpu" and trainers.get(n).family != "library")
GPU_TRAINERS = tuple(trainers.gpu())


@dataclass(frozen=True)
class Term:
    """One thing a trainer keeps during a step, in bytes at a given batch size."""

    what: str
    nbytes: int
    scales_with_batch: bool


def _check(sizes, batch):
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be at least two positive layer widths, got {sizes}")
    return sizes, check_positive_int("batch", batch)


def footprint(trainer: str, sizes, batch: int, dtype=None, **options) -> list[Term]:
    """What ``trainer`` holds at its peak during one SGD step on ``batch`` examples, its layer widths ``sizes``
    [n_0, ..., n_L]; ``dtype`` defaults to the trainer's (float64 for "reference", float32 otherwise)."""
    known = CPU_TRAINERS + GPU_TRAINERS
    if trainer not in known:
        raise ValueError(f"no footprint formula for trainer {trainer!r}; formulas exist for {list(known)}")
    n, B = _check(sizes, batch)
    s = np.dtype(dtype or ("float64" if trainer == "reference" else "float32")).itemsize
    P = n_params(n)
    outputs = sum(n[1:])  # activations per example, every layer but the input
    terms = [Term("weights and biases", P * s, False),
             Term("minibatch X, Y", B * (n[0] + n[-1]) * s, True)]
    if trainer == "serial-example":
        terms += [Term("gradient accumulators", P * s, False),
                  Term("one example's activations and deltas", (sum(n) + outputs) * s, False)]
    elif trainer in ("numpy", "reference"):
        terms += _expression_peak(trainer, n, B, s)
    else:  # the matrix trainers: the minibatch's activations and deltas (the GPU ones' in device memory)
        device = "device " if trainer in GPU_TRAINERS else ""
        terms += [Term(f"{device}activations A_1..A_L", B * outputs * s, True),
                  Term(f"{device}deltas Δ_1..Δ_L", B * outputs * s, True)]
        if options.get("update", "rows") == "partials" and trainer in ("threads", "hybrid"):
            # one partial sum per worker that splits the minibatch (the trainers' own defaults: 2 on 2 cores)
            threads = int(options.get("threads", trainers.get(trainer).options.get("threads", 1)))
            groups = options.get("groups") if trainer == "hybrid" else threads
            p = min((2 if threads % 2 == 0 else 1) if groups is None else int(groups), B)
            if p > 1:
                terms.append(Term(f"{p} partial gradients", p * P * s, False))
        if trainer == "cupy":
            terms.append(Term("bias-gradient buffers", outputs * s, False))
        elif trainer in GPU_TRAINERS:
            terms.append(Term("loss partial sums (float64)", reduce_blocks(B, n[-1]) * 8, False))
    return terms


def _expression_peak(trainer, n, B, s) -> list[Term]:
    """The numpy and reference trainers write a step as array expressions: every operator returns a new
    array (or, from ELIDE_BYTES up, reuses a temporary operand). Their peak is the largest of the phases
    below, each listing what is alive at its highest point (read from ``numpy_trainer`` / ``reference``)."""
    L = len(n) - 1
    A = [B * w * s for w in n]      # bytes of each layer's activations (A[0] is the minibatch X)
    W = [n[l] * n[l + 1] * s + n[l + 1] * s for l in range(L)]  # bytes of each layer's (dW, db)
    # forward through layer l, expit(A W + b): the sum z (+ b lands in A W's temporary) and expit's new array alive
    phases = [(f"forward layer {l}", sum(A[1:l]) + 2 * A[l]) for l in range(1, L + 1)]
    kept = sum(A[1:]) + A[L]  # all activations + err = A_L − Y, alive to the end of the backward pass
    for l in range(L, 0, -1):  # backward: grads[l] = (A_{l-1}ᵀ Δ_l, Σ Δ_l), then Δ_{l-1}
        grads = sum(W[l - 1:])
        phases.append((f"gradient of layer {l}", kept + A[l] + grads))
        if l > 1:  # Δ_{l-1} = (Δ_l W_lᵀ) ∘ A ∘ (1 − A): the old Δ, (Δ W)∘A, (1 − A), + one more below ELIDE_BYTES
            alive = 2 if A[l - 1] >= ELIDE_BYTES else 3
            phases.append((f"delta of layer {l - 1}", kept + A[l] + grads + alive * A[l - 1]))
    # update W -= lr * dW: every gradient and one weight-sized temporary (lr * dW)
    phases.append(("update", sum(W) + max(W)))
    name, nbytes = max(phases, key=lambda p: p[1])
    return [Term(f"step temporaries at their peak ({name})", nbytes, True)]


def footprint_bytes(trainer: str, sizes, batch: int, dtype=None, **options) -> int:
    return sum(t.nbytes for t in footprint(trainer, sizes, batch, dtype, **options))


def footprint_table(trainer: str, sizes, batches, dtype=None, **options) -> pd.DataFrame:
    """One row per term and batch size: the footprint's anatomy."""
    return pd.DataFrame([{"trainer": trainer, "batch": B, "term": t.what, "bytes": t.nbytes,
                          "scales_with_batch": t.scales_with_batch}
                         for B in batches for t in footprint(trainer, sizes, B, dtype, **options)])


def layer_table(sizes, batch: int, dtype="float32") -> pd.DataFrame:
    """Seed 002's VGG table for an MLP: per layer the weights' memory, the output size per example, its
    memory per example and at ``batch``, and what training adds (output gradients Δ, weight gradients)."""
    sizes, B = _check(sizes, batch)
    s = np.dtype(dtype).itemsize
    # (layer, its weights' bytes, its outputs per example, whether training keeps their gradients Δ)
    layers = [(f"input ({sizes[0]})", 0, sizes[0], 0),
              *((f"fully-connected {a}x{b}", (a * b + b) * s, b, 1) for a, b in zip(sizes[:-1], sizes[1:]))]
    df = pd.DataFrame([{"layer": layer, "weights_bytes": w, "output_per_example": out,
                        "output_bytes_per_example": out * s, "outputs_bytes_at_batch": B * out * s,
                        "deltas_bytes_at_batch": kept * B * out * s, "weight_gradient_bytes": w}
                       for layer, w, out, kept in layers])
    df.loc[len(df)] = {"layer": "total", **df.drop(columns="layer").sum().to_dict()}
    return df


def max_batch(trainer: str, sizes, memory_bytes: int, dtype=None, limit: int = 1 << 40, **options) -> int:
    """The largest minibatch whose footprint fits in ``memory_bytes`` (0 if not even one example fits).
    Every footprint grows with B, so a bisection finds it."""
    if memory_bytes <= 0:
        raise ValueError(f"memory_bytes must be positive, got {memory_bytes}")
    fits = lambda B: footprint_bytes(trainer, sizes, B, dtype, **options) <= memory_bytes
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi < limit and fits(hi):
        lo, hi = hi, hi * 2
    if hi >= limit and fits(limit):
        return limit  # no B term: any batch fits (serial-example keeps one example at a time)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def measure_peak(trainer: str, net, batch: int, n_in: int = 784, n_out: int = 10, dtype=None, seed: int = 0,
                 **options) -> int:
    """Peak bytes traced during one step of a fresh ``trainer`` on a random minibatch of ``batch`` examples: its
    weights, the minibatch and everything the step allocates (what ``footprint`` predicts). Trainer and minibatch
    are made while tracing, then the peak is reset (building casts float64 initial weights, a transient that is
    not training); a warm-up step on another instance first loads the numba kernels: their compiling is not."""
    _, B = _check([n_in, n_out], batch)
    cls = trainers.get(trainer)
    with cls(net=net, n_in=n_in, n_out=n_out, dtype=dtype, seed=seed, **options) as warm:
        rng = np.random.default_rng(seed)
        X = rng.random((2, n_in)).astype(warm.dtype)
        warm.step(X, X[:, :n_out], 0.1)
    gc.collect()
    tracemalloc.start()
    try:
        t = cls(net=net, n_in=n_in, n_out=n_out, dtype=dtype, seed=seed, **options)
        X = rng.random((B, n_in), dtype=np.float64).astype(t.dtype)
        Y = np.eye(n_out, dtype=t.dtype)[rng.integers(0, n_out, B)]
        gc.collect()
        tracemalloc.reset_peak()
        t.step(X, Y, 0.1)
        peak = tracemalloc.get_traced_memory()[1]
        t.close()
    finally:
        tracemalloc.stop()
    return peak


def compare(trainer: str, net, batches, n_in: int = 784, n_out: int = 10, dtype=None, **options) -> pd.DataFrame:
    """Formula against measurement at each batch size (``ratio`` = formula / measured)."""
    rows = []
    for B in batches:
        formula = footprint_bytes(trainer, layer_sizes(net, n_in, n_out), B, dtype, **options)
        measured = measure_peak(trainer, net, B, n_in, n_out, dtype, **options)
        rows.append({"trainer": trainer + "".join(f" {k}={v}" for k, v in options.items()), "net": str(net),
                     "batch": B, "formula_bytes": formula, "measured_bytes": measured, "ratio": formula / measured})
    return pd.DataFrame(rows)


# -- The figure: formula against measurement -------------------------------------------------------
def trainer_and_options(spec: str) -> tuple[str, dict]:
    """A trainer as the footprint figures name it: a trainer, or ``threads:partials`` for the paper's
    partial gradients (2 workers, one weight-sized partial sum each)."""
    name, _, variant = spec.partition(":")
    if variant not in ("", "partials"):
        raise ValueError(f"{spec!r}: the only variant is ':partials' (threads:partials)")
    return name, ({"threads": 2, "update": "partials"} if variant == "partials" else {})


def plot_footprint(measured: pd.DataFrame, specs, batch_axis=None):
    """Per network, each footprint formula against B (lines) and the peaks ``tracemalloc`` measured
    (markers). Trainers whose formulas are the same share one line, named in its legend entry, and their
    measured peaks keep a marker each."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    batch_axis = np.unique(np.geomspace(1, 10_000, 30).astype(int)) if batch_axis is None else batch_axis
    nets = list(dict.fromkeys(measured.net.astype(str)))
    fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 5.2), squeeze=False)
    markers = "osD^v<>pP*Xh"
    for ax, net in zip(axes[0], nets):
        sizes = layer_sizes(net, 784, 10)
        curves = {}  # formula curve -> the trainers it belongs to
        for spec in specs:
            name, opts = trainer_and_options(spec)
            curve = tuple(footprint_bytes(name, sizes, int(B), **opts) for B in batch_axis)
            curves.setdefault(curve, []).append(spec)
        for i, (curve, group) in enumerate(curves.items()):
            label = group[0] if len(group) == 1 else f"{', '.join(group)} (one formula)"
            ax.plot(batch_axis, np.array(curve) / 2**20, color=f"C{i}", label=label)
            for j, spec in enumerate(group):
                m = measured[(measured.trainer == spec) & (measured.net.astype(str) == net)]
                ax.plot(m.batch, m.measured_bytes / 2**20, markers[j % len(markers)], color=f"C{i}", mfc="none",
                        ms=5 + 2.5 * (len(group) - 1 - j))  # nested sizes: a group's coinciding peaks all show
        ax.set(xscale="log", yscale="log", xlabel="minibatch size B", ylabel="peak memory during a step (MiB)",
               title=f"Net-{net}: formula (lines), tracemalloc peak (markers)")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ticker.StrMethodFormatter("{x:,g}"))  # 1, 10, 1,000, not 10³
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.04)  # a free strip for the machine's stamp
    return fig
