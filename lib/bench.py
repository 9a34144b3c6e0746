"""Benchmark: time per SGD step of every trainer, as GFLOP/s and as ratios measured side by side.

    python -m parbp.bench --net 2h --batch 100 1000 --impl all --threads 1 2

Every trainer steps on synthetic data shaped like the dataset, warmed up, then timed in interleaved rounds
(``timing.side_by_side``: a burst of load slows every configuration alike), each sample after ``REWARM_S``
of untimed steps; a configuration's time is the median of its samples. Beside the step times (ms_per_step,
s_per_epoch, gflops) the same rounds time the references the ratios divide by: the best 2048³ float32 GEMM
of numpy, PyTorch and MKL at the same threads (vs_sgemm, sgemm_*), PyTorch's step (vs_torch: above 1 is
faster), the same trainer on one thread (efficiency), and the machine's own ceilings for ``threads``
independent one-thread sgemms or memory streams (sgemm_efficiency, stream_efficiency; see ``_Independent``).
sgemm_efficiency_low and rounds_core_lost flag rounds where the compute ceiling fell below
``1 − CORE_LOST/threads``: on a shared VM a core is sometimes taken away for a while.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import blas, envinfo, results, trainers
from .blas import blas_threads
from .cli import Parser, check_choice, positive_int
from .results import FIGURES
from .timing import side_by_side
from .nets import flops_per_step, layer_sizes

EPOCH_EXAMPLES = 50_000  # the paper's MNIST training split
MIN_SAMPLE_S = 0.02  # a sample lasts at least this long, so timer resolution and jitter stay small
MAX_CONFIG_S = 20.0  # stop sampling a configuration (after timing.MIN_SAMPLES) once it has taken this long
REWARM_S = 0.15  # untimed running before each sample (see timing.side_by_side)
STREAM_MB = 64  # array size of the memory-bound ceiling, per worker: well past the caches
SGEMM_N = 2048
CORE_LOST = 0.5  # a round's compute ceiling below 1 − CORE_LOST/threads: a core was missing (see rounds_core_lost)
SGEMM_LIBRARIES = ("numpy", "torch", "mkl")  # whose float32 GEMM the best sgemm is taken from, where present
COLUMNS = ["impl", "threads", "batch", "ms_per_step", "s_per_epoch", "gflops", "vs_sgemm", "vs_torch",
           "efficiency", "gemm_backend", "gemm_reason", "net", "n_in", "n_out", "dtype", "device", "samples",
           "sgemm_gflops", "sgemm_best", *(f"sgemm_{lib}_gflops" for lib in SGEMM_LIBRARIES), "sgemm_efficiency",
           "stream_efficiency", "sgemm_efficiency_low", "rounds_core_lost", "loadavg", "ms_rounds"]
CEILINGS = ("sgemm", "stream")
DEFAULT_OUT = FIGURES / "bench_cpu.csv"
SKIP_IN_ALL = ("reference",)  # the float64 source of truth is for checking, not racing


def cpu_impls() -> list[str]:
    """Every registered CPU trainer, in the registry's order ('all' on the command line)."""
    return [n for n in trainers.names() if trainers.get(n).device == "cpu" and n not in SKIP_IN_ALL]


def gpu_impls() -> list[str]:
    return [*trainers.gpu(), "torch"]


def variant(impl: str) -> tuple[str, dict]:
    """A trainer name with options of its own: ``"threads:update=partials"`` → ``("threads", {"update":
    "partials"})``. Each variant is timed as its own row, its ``impl`` column the whole label."""
    name, *pairs = impl.split(":")
    cls = trainers.get(name)  # an unknown name fails here, listing the registered ones
    settable = sorted(set(cls.options) - {"threads"})  # threads is the benchmark's own axis
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in settable:
            raise ValueError(f"bad trainer variant {impl!r}: expected {name}:OPTION=VALUE with OPTION one of "
                             f"{settable or 'none (it takes no options)'}")
        options[key] = int(value) if value.isdigit() else value
    return name, options


def takes_threads(impl: str) -> bool:
    return "threads" in trainers.get(variant(impl)[0]).options


# -- What one sample times -------------------------------------------------------------------------
class _Sgemm:
    """A product of two n×n float32 matrices at a given number of threads, by one library: numpy's
    matmul (OpenBLAS), PyTorch's (the MKL linked into it) or MKL's through ``parbp.blas``."""

    def __init__(self, threads, n=SGEMM_N, device="cpu", library="numpy"):
        self.threads, self.flops = threads, 2 * n**3
        check_choice("sgemm library", library, SGEMM_LIBRARIES)
        if device == "gpu" or library == "torch":
            import torch

            if device == "gpu" and not torch.cuda.is_available():
                raise RuntimeError("no CUDA device visible to torch")
            a = torch.rand(n, n, device="cuda" if device == "gpu" else "cpu")
            out = torch.empty_like(a)

            def run():
                if device == "gpu":
                    return torch.mm(a, a, out=out), torch.cuda.synchronize()
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                torch.mm(a, a, out=out)

            self._run = run
            return
        if library == "mkl" and "mkl" not in blas.available_backends():
            raise RuntimeError("MKL is not installed (pip install 'parbp[mkl]')")
        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
        out = np.empty_like(a)
        self._run = (lambda: blas.gemm_into(a, a, out, backend="mkl")) if library == "mkl" else \
            (lambda: np.matmul(a, a, out=out))

    def __call__(self):
        with blas_threads(self.threads):
            self._run()


class _Independent:
    """``workers`` one-thread copies of a kernel at once, each on its own arrays and thread: sharing only the
    machine, their parallel efficiency is its ceiling for any program, compute-bound ("sgemm", an n×n matmul)
    or memory-bound ("stream", ``a + 1`` over STREAM_MB-sized arrays). A trainer's step mixes both."""

    def __init__(self, workers, kind, n=SGEMM_N):
        from concurrent.futures import ThreadPoolExecutor

        rng = np.random.default_rng(0)
        self.threads = workers
        shape = (n, n) if kind == "sgemm" else (STREAM_MB * 2**20 // 4,)
        self._data = [(rng.random(shape, dtype=np.float32), np.empty(shape, dtype=np.float32)) for _ in range(workers)]
        self._kernel = (lambda a, out: np.matmul(a, a, out=out)) if kind == "sgemm" else \
                       (lambda a, out: np.add(a, 1.0, out=out))
        self._pool = ThreadPoolExecutor(workers - 1) if workers > 1 else None

    def _one(self, k):
        self._kernel(*self._data[k])

    def __call__(self):
        with blas_threads(1):
            futures = [self._pool.submit(self._one, k) for k in range(1, self.threads)]
            self._one(0)
            for f in futures:
                f.result()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()


class _Steps:
    """One trainer stepping on a fixed synthetic minibatch (the loss it returns forces any device sync)."""

    def __init__(self, impl, net, batch, threads, n_in, n_out, dtype, device, options, seed=0):
        impl, own = variant(impl)
        cls = trainers.get(impl)
        options = {**options, **own}
        if "threads" in cls.options:
            options["threads"] = threads
        if device == "gpu" and impl == "torch":
            options["device"] = "cuda"
        self.pin_blas = "threads" not in cls.options  # numpy & co: one thread, as the threads column says
        self.trainer = cls(net=net, n_in=n_in, n_out=n_out, dtype=dtype, seed=seed, **options)
        rng = np.random.default_rng(seed)
        self.X = rng.random((batch, n_in), dtype=np.float32).astype(dtype)
        self.Y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, batch)] if n_out > 1 else \
            rng.integers(0, 2, (batch, 1)).astype(dtype)
        self.flops = flops_per_step(self.trainer.sizes, batch)

    def __call__(self):
        # a small learning rate keeps the weights (and so the speed of exp) near where training starts
        with blas_threads(1) if self.pin_blas else contextlib.nullcontext():
            return self.trainer.step(self.X, self.Y, 1e-3)

    def gemm_backend(self) -> tuple[str, str]:
        """(the BLAS this trainer's products ran on, why) as of its last step."""
        if hasattr(self.trainer, "gemm_backend"):
            return self.trainer.gemm_backend, self.trainer.gemm_reason
        return {"torch": ("torch", "PyTorch's own (MKL, linked into it)"), "numpy": ("openblas", "numpy's matmul"),
                "serial-example": ("none", "numba matrix-vector loops")}.get(
                    self.trainer.name, ("own", f"{self.trainer.name}'s own BLAS"))

    def close(self):
        self.trainer.close()


def _time_side_by_side(fns: list, repeats: int, warmup: int, rewarm_s: float = REWARM_S) -> list[list[float]]:
    """``timing.side_by_side`` with the benchmark's settings (slow configurations stop early)."""
    return side_by_side(fns, repeats, warmup, MIN_SAMPLE_S, rewarm_s, MAX_CONFIG_S)


# -- The Python API --------------------------------------------------------------------------------
def sgemm_gflops(threads: int = 1, n: int = SGEMM_N, repeats: int = 5, device: str = "cpu",
                 library: str = "numpy") -> float:
    """This machine's float32 GEMM speed through ``library`` (``SGEMM_LIBRARIES``): n×n matrices, median of ``repeats``."""
    s = _Sgemm(threads, n, device, library)
    return s.flops / np.median(_time_side_by_side([s], repeats, warmup=1)[0]) / 1e9


def run(impls, nets=("2h",), batches=(100, 1000), threads=(1,), n_in: int = 784, n_out: int = 10,
        dtype: str = "float32", device: str = "cpu", repeats: int = 7, warmup: int = 2,
        progress=None, sgemm_n: int = SGEMM_N, compare_torch: bool = True, rewarm_s: float = REWARM_S,
        **options) -> pd.DataFrame:
    """Time every (impl, net, batch, threads) side by side; one row each, columns ``COLUMNS``. Trainers without
    a ``threads`` option run at 1; "torch" is timed beside them for ``vs_torch`` unless ``compare_torch=False``
    (its rows returned only if asked for); trainers that cannot run here are left out, the reason sent to
    ``progress`` (print-like; None is silent). ``options`` go to every trainer that accepts them."""
    impls, nets, batches, threads = list(impls), list(nets), [int(b) for b in batches], [int(t) for t in threads]
    if not impls:
        raise ValueError("no implementations to benchmark")
    for name, values in (("batches", batches), ("threads", threads), ("nets", nets)):
        if not values:
            raise ValueError(f"{name} is empty")
    if any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise ValueError(f"batches and threads must be positive, got {batches} and {threads}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    for impl in impls:
        variant(impl)  # unknown names and options fail here, listing the valid ones
    say = progress or (lambda *a: None)

    nets = [n if isinstance(n, str) else tuple(int(s) for s in n) for n in nets]  # hashable keys
    plan = _plan(impls, nets, batches, threads, compare_torch, say, options)
    wanted = {p for p in plan if p[0] in impls}
    fns, rows, references = [], [], {}
    counts = sorted({t for _, _, _, t in plan})
    try:
        # references timed in the same rounds: sgemm at every thread count, and on the CPU the
        # machine's ceilings for parallel efficiency (see _Independent) at every thread count and at 1
        for t in counts:
            for lib in SGEMM_LIBRARIES if device == "cpu" else ["numpy"]:
                try:
                    references["library", lib, t] = _Sgemm(t, sgemm_n, device, lib)
                except (ImportError, RuntimeError) as e:  # no torch, no MKL, --device gpu without a GPU
                    say(f"{lib}'s sgemm on {device} unavailable: {e}")
        if device == "cpu" and max(counts, default=1) > 1:
            references.update({(kind, t): _Independent(t, kind, sgemm_n) for kind in CEILINGS for t in {1, *counts}})
        for impl, net, batch, t in plan:
            accepted = {k: v for k, v in options.items() if k in trainers.get(variant(impl)[0]).options}
            try:
                fns.append(_Steps(impl, net, batch, t, n_in, n_out, dtype, device, accepted))
                rows.append((impl, net, batch, t))
            except (trainers.TrainerUnavailable, RuntimeError, ImportError) as e:
                say(f"skipping {impl} (net {net}, batch {batch}, threads {t}): {e}")
        say(f"timing {len(fns)} configurations + sgemm, {repeats} rounds")
        ref_keys = list(references)
        samples = _time_side_by_side([*fns, *(references[k] for k in ref_keys)], repeats, warmup, rewarm_s)
    finally:
        for fn in [*fns, *references.values()]:
            if hasattr(fn, "close"):
                fn.close()

    df = _table(rows, fns, samples, dict(zip(ref_keys, samples[len(fns):])), references, counts, wanted,
                n_in, n_out, dtype, device)
    return df[df.pop("_keep")].reset_index(drop=True)[COLUMNS]


def _plan(impls, nets, batches, threads, compare_torch, say, options) -> list[tuple]:
    """(impl, net, batch, threads) of every configuration to time: the trainers asked for that can run
    here, and torch beside them; a trainer without a threads option runs at 1 thread only."""
    plan = []
    for impl in dict.fromkeys([*impls, *(["torch"] if compare_torch else [])]):
        why = trainers.why_unavailable(variant(impl)[0])
        if why and not (options.get("simulator") and "simulator" in trainers.get(variant(impl)[0]).options):
            # (numba-cuda asked for its simulator stands in for a GPU: the campaign's dry run times it)
            say(f"skipping {impl}: {why}")
            continue
        plan += [(impl, net, batch, t) for net in nets for batch in batches
                 for t in (threads if takes_threads(impl) else [1])]
    return plan


def _table(rows, fns, samples, ref_samples, references, counts, wanted, n_in, n_out, dtype, device) -> pd.DataFrame:
    """One row per timed configuration, with the references timed in the same rounds beside it."""
    times = {k: float(np.median(s)) for k, s in ref_samples.items()}
    library_gflops = {(lib, t): references[k].flops / times[k] / 1e9 for k in times if k[0] == "library"
                      for _, lib, t in [k]}
    best = {t: max((g, lib) for (lib, tt), g in library_gflops.items() if tt == t) for t in counts
            if any(tt == t for _, tt in library_gflops)}
    sgemm = {t: g for t, (g, _) in best.items()}
    load = envinfo.load()
    ceiling = {(kind, t): times[kind, 1] / times[kind, t] for kind in CEILINGS for t in counts if (kind, t) in times}
    by_round = {t: np.divide(ref_samples["sgemm", 1], ref_samples["sgemm", t]) for t in counts if ("sgemm", t) in times}
    table = []
    for (impl, net, batch, t), fn, s in zip(rows, fns, samples):
        row = _step_row(impl, net, batch, t, fn, s, n_in, n_out, dtype, device)
        table.append(dict(row, vs_sgemm=row["gflops"] / sgemm[t] if t in sgemm else np.nan, vs_torch=np.nan,
                          net=net if isinstance(net, str) else "-".join(map(str, layer_sizes(net, n_in, n_out))),
                          sgemm_gflops=sgemm.get(t, np.nan), sgemm_best=best[t][1] if t in best else "",
                          **{f"sgemm_{lib}_gflops": library_gflops.get((lib, t), np.nan) for lib in SGEMM_LIBRARIES},
                          efficiency=np.nan, loadavg=load, **dict(zip(("gemm_backend", "gemm_reason"), fn.gemm_backend())),
                          **{f"{kind}_efficiency": ceiling.get((kind, t), np.nan) for kind in CEILINGS},
                          sgemm_efficiency_low=by_round[t].min() if t in by_round else np.nan,
                          rounds_core_lost=int((by_round[t] < 1 - CORE_LOST / t).sum()) if t in by_round else 0,
                          _keep=(impl, net, batch, t) in wanted))
    df = pd.DataFrame(table, columns=[*COLUMNS, "_keep"]).astype({"_keep": bool})
    torch_ms = {(net, batch, t): ms for impl, net, batch, t, ms in
                zip(df.impl, df.net, df.batch, df.threads, df.ms_per_step) if impl == "torch"}
    df["vs_torch"] = [torch_ms.get(k, np.nan) / ms for k, ms in zip(zip(df.net, df.batch, df.threads), df.ms_per_step)]
    one_thread = {(impl, net, batch): ms for impl, net, batch, t, ms in
                  zip(df.impl, df.net, df.batch, df.threads, df.ms_per_step) if t == 1}
    df["efficiency"] = [one_thread.get(k, np.nan) / (ms * t) for k, ms, t in
                        zip(zip(df.impl, df.net, df.batch), df.ms_per_step, df.threads)]
    return df


def measure(impl: str, net="2h", batch: int = 100, threads: int = 1, n_in: int = 784, n_out: int = 10,
            repeats: int = 7, dtype: str = "float32", device: str = "cpu", **options) -> dict:
    """One configuration alone (no torch or sgemm alongside): a dict with ms_per_step, gflops, ..."""
    why = trainers.why_unavailable(impl)
    if why:
        raise trainers.TrainerUnavailable(f"trainer {impl!r} is unavailable here: {why}")
    if "threads" not in trainers.get(impl).options and threads != 1:
        raise ValueError(f"trainer {impl!r} takes no threads option; measure it at threads=1")
    fn = _Steps(impl, net, int(batch), int(threads), n_in, n_out, dtype, device, options)
    try:
        return _step_row(impl, net, batch, threads, fn, _time_side_by_side([fn], repeats, warmup=2)[0], n_in, n_out,
                         dtype, device)
    finally:
        fn.close()


def _step_row(impl, net, batch, threads, fn, samples, n_in, n_out, dtype, device) -> dict:
    """A configuration's time from its samples (their median): per step, per epoch and as GFLOP/s."""
    sec = float(np.median(samples))
    return dict(impl=impl, threads=threads, batch=batch, ms_per_step=sec * 1e3,
                s_per_epoch=sec * math.ceil(EPOCH_EXAMPLES / batch), gflops=fn.flops / sec / 1e9,
                net=net, n_in=n_in, n_out=n_out, dtype=dtype, device=device, samples=len(samples),
                ms_rounds=rounds_text(samples))


def rounds_text(samples) -> str:
    """A configuration's samples in milliseconds, round by round (the rounds interleave every configuration, so
    two rows' samples divided round by round give a ratio's spread; ``round_times`` reads them back)."""
    return " ".join(f"{1e3 * s:.5g}" for s in samples)


def round_times(text) -> np.ndarray:
    """The milliseconds per step of each round, from ``rounds_text``; empty for a row recorded without them."""
    return np.array([float(x) for x in text.split()]) if isinstance(text, str) else np.array([])


class _RowsTimesWeights:
    """One (rows × n)·(n × n) product on one BLAS thread (``backend``): a worker's forward product on its share."""

    def __init__(self, rows, n, seed=0, backend="openblas"):
        rng = np.random.default_rng(seed)
        self.backend = backend
        self.A, self.W = rng.random((rows, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
        self.out = np.empty((rows, n), dtype=np.float32)

    def __call__(self):
        with blas_threads(1):
            blas.gemm_into(self.A, self.W, self.out, backend=self.backend)


def gemm_fixed_cost(rows=(10, 25, 50, 100, 200, 400), n: int = 1024, repeats: int = 7,
                    backend: str = "openblas") -> tuple[pd.DataFrame, dict]:
    """How a one-thread GEMM's time grows with the rows of its left operand, (rows × n)·(n × n): (table, least
    squares fit t ≈ fixed_ms + per_row_ms·rows). BLAS packs the whole weight matrix whatever the rows, so
    splitting the examples p ways pays ``fixed`` p times. ``backend``: ``parbp.blas.BACKENDS``."""
    rows = [int(r) for r in rows]
    if len(rows) < 2 or min(rows) < 1:
        raise ValueError(f"rows needs at least two positive sizes to fit a line, got {rows}")
    blas.cblas_gemm(np.float32, backend)  # an unknown backend fails here, naming the valid ones
    fns = [_RowsTimesWeights(r, n, backend=backend) for r in rows]
    samples = _time_side_by_side(fns, repeats, warmup=2, rewarm_s=0.0)
    ms = [float(np.median(s)) * 1e3 for s in samples]
    fixed, per_row = fit_fixed_cost(rows, ms)
    table = pd.DataFrame({"rows": rows, "ms": ms, "gflops": [2 * r * n * n / (m / 1e3) / 1e9 for r, m in zip(rows, ms)],
                          "fixed_share": [fixed / m for m in ms]})
    return table.assign(backend=backend), {"fixed_ms": float(fixed), "per_row_ms": float(per_row), "n": n,
                                           "backend": backend}



def fit_fixed_cost(rows, ms) -> tuple[float, float]:
    """The least-squares line t(rows) ≈ fixed + per_row·rows through measured times: (fixed_ms, per_row_ms)."""
    per_row, fixed = np.polyfit(np.asarray(rows, dtype=float), np.asarray(ms, dtype=float), 1)
    return float(fixed), float(per_row)


def plot_gemm_fixed_cost(table: pd.DataFrame, n: int = 1024):
    """``gemm_fixed_cost``'s table (one or several backends) on log axes, where the fixed cost shows.

    Left: the time per product and its fitted line, whose flat part at few rows is the fixed cost (drawn
    as a dashed level). Right: the share of each product's time that is fixed, the price each of p
    workers pays again when the examples are split.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    backends = table["backend"] if "backend" in table else pd.Series("BLAS", index=table.index)
    fig, (ax_ms, ax_share) = plt.subplots(1, 2, figsize=(9, 3.6))
    r = np.geomspace(table.rows.min(), table.rows.max(), 100)
    top = 1.0  # a share above 1 is noise (the fit's fixed part exceeds a measured time): shown, not clipped
    for backend, rows in table.groupby(backends, sort=False):
        fixed, per_row = fit_fixed_cost(rows.rows, rows.ms)
        dots = ax_ms.plot(rows.rows, rows.ms, "o", label=f"{backend}, measured")[0]
        color = dots.get_color()
        ax_ms.plot(r, fixed + per_row * r, "-", color=color, label=f"{backend}: fixed + per row")
        ax_ms.axhline(fixed, ls="--", lw=1, color=color, label=f"{backend}: fixed part alone")
        ax_share.plot(rows.rows, fixed / rows.ms, "o-", color=color, label=backend)
        top = max(top, 1.05 * float((fixed / rows.ms).max()))
    ax_ms.set(xscale="log", yscale="log", xlabel="rows r", ylabel="ms per product",
              title=f"one-thread (r×{n})·({n}×{n})")
    ax_share.set(xscale="log", xlabel="rows r", ylabel="fixed part of the product's time", ylim=(0, top),
                 title="the share each worker pays again")
    for ax in (ax_ms, ax_share):
        results.plain_log_ticks(ax)
    ax_share.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_ms.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -- The command line ------------------------------------------------------------------------------
def with_environment(df: pd.DataFrame) -> pd.DataFrame:
    """The table with the machine it ran on (parbp.envinfo) as constant ``env_*`` columns."""
    env = {f"env_{k}": v for k, v in envinfo.summary().items()}
    # OpenBLAS picks its kernels by CPU model; a CPU newer than the build falls back to older ones
    env["env_blas_kernels"] = "; ".join(sorted({envinfo.kernels(i) for i in envinfo.blas() if i["user_api"] == "blas"}))
    return df.assign(**env)


def keep_other_machines(df: pd.DataFrame, path) -> pd.DataFrame:
    """This run's rows, then the rows ``path`` already holds from other CPU models (``env_cpu``): one CSV
    keeps the latest run of every machine type measured (an Intel run does not erase the AMD one)."""
    path = results.redirect(path)
    try:
        old = pd.read_csv(path)
    except (OSError, ValueError):
        return df
    if "env_cpu" not in old.columns or "env_cpu" not in df.columns:
        return df
    others = old[~old.env_cpu.isin(set(df.env_cpu))]
    return pd.concat([df, others], ignore_index=True) if len(others) else df


def _racer(impl: str) -> bool:
    """In the race for the best trainer of ``by_machine``: this study's matrix trainers that run the serial
    algorithm on the CPU (variants too); baselines and Hogwild are not."""
    name = impl.split(":")[0]
    if name not in trainers.names():  # e.g. torch-cuda
        return False
    cls = trainers.get(name)
    return cls.device == "cpu" and cls.matrix and cls.exact


def by_machine(df: pd.DataFrame) -> pd.DataFrame:
    """Per CPU model, batch and thread count: the best matrix trainer against PyTorch and against the
    best sgemm, and the parallel efficiency of ``threads`` (the paper's design), with the BLAS each used."""
    rows = []
    cpu = df.env_cpu if "env_cpu" in df.columns else pd.Series("this machine", index=df.index)
    for (machine, net, batch, t), g in df.assign(env_cpu=cpu).groupby(["env_cpu", "net", "batch", "threads"]):
        ours = g[g.impl.map(_racer)]
        if ours.empty:
            continue
        best = ours.loc[ours.ms_per_step.idxmin()]
        torch = g[g.impl == "torch"].ms_per_step
        threads = g[g.impl == "threads"]
        rows.append({"cpu": machine, "net": net, "batch": batch, "threads": t, "best": best.impl,
                     "best_ms": best.ms_per_step, "torch_ms": torch.iloc[0] if len(torch) else np.nan,
                     "best_over_torch_time": best.ms_per_step / torch.iloc[0] if len(torch) else np.nan,
                     "best_vs_sgemm": best.vs_sgemm, "sgemm_best": best.get("sgemm_best", ""),
                     "sgemm_gflops": best.sgemm_gflops,
                     "threads_efficiency": threads.efficiency.iloc[0] if len(threads) else np.nan,
                     "gemm_backend": best.get("gemm_backend", ""), "blas": best.get("env_blas_kernels", ""),
                     "loadavg": best.get("loadavg", np.nan)})
    return pd.DataFrame(rows)


def format_table(df: pd.DataFrame) -> str:
    show = df[["impl", "threads", "batch", "ms_per_step", "s_per_epoch", "gflops", "vs_sgemm", "vs_torch", "efficiency"]]
    show = show.rename(columns={"ms_per_step": "ms/step", "s_per_epoch": "s/epoch", "gflops": "GFLOP/s",
                                "vs_sgemm": "÷ sgemm", "vs_torch": "÷ torch", "efficiency": "par. eff."})
    return show.to_string(index=False, float_format=lambda v: f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}")


def _impl(text: str) -> str:
    if text != "all":
        try:
            variant(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_args(argv=None) -> argparse.Namespace:
    from .data import NAMES
    from .nets import HIDDEN

    p = Parser(prog="python -m parbp.bench", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", nargs="+", default=["2h"], choices=sorted(HIDDEN), help="networks (seed 001 §5.2)")
    p.add_argument("--batch", nargs="+", type=positive_int, default=[100, 1000], help="minibatch sizes")
    p.add_argument("--impl", nargs="+", default=["all"], type=_impl, metavar="IMPL",
                   help=f"trainers, from: {', '.join(trainers.names())}; 'all' = every CPU trainer (with "
                        f"--device gpu: every GPU trainer); NAME:OPTION=VALUE times a variant, e.g. "
                        f"threads:update=partials")
    p.add_argument("--threads", nargs="+", type=positive_int, default=[1], help="thread counts")
    p.add_argument("--dataset", default="mnist", choices=list(NAMES), help="only its dimensions are used")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=positive_int, default=7, help="timed rounds (the median is reported)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--out", type=Path, default=None, help=f"CSV path (default {DEFAULT_OUT.relative_to(DEFAULT_OUT.parent.parent)}"
                                                           f", or figures/bench_gpu.csv with --device gpu)")
    return p.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    from .data import dims

    args = parse_args(argv)
    everything = gpu_impls() if args.device == "gpu" else cpu_impls()
    impls = list(dict.fromkeys(i for impl in args.impl for i in (everything if impl == "all" else [impl])))
    n_in, n_out = dims(args.dataset)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    df = run(impls, args.net, args.batch, args.threads, n_in=n_in, n_out=n_out, dtype=args.dtype,
             device=args.device, repeats=args.repeats, progress=log)
    if df.empty:
        print(f"nothing to time: none of {impls} can run on {args.device} here (reasons above); no CSV written")
        return df
    df.insert(df.columns.get_loc("net") + 1, "dataset", args.dataset)
    out = args.out or (DEFAULT_OUT if args.device == "cpu" else DEFAULT_OUT.with_name("bench_gpu.csv"))
    results.write_csv(keep_other_machines(with_environment(df), out), out)
    for net in args.net:
        sub = df[df.net == net]
        print(f"net {net} ({'-'.join(map(str, layer_sizes(net, n_in, n_out)))}, {args.dataset}, {args.dtype}, "
              f"{args.device}); the best sgemm {SGEMM_N}³: " + ", ".join(
                  f"{r.sgemm_gflops:.0f} GFLOP/s at {t} thread(s) ({r.sgemm_best}; " + ", ".join(
                      f"{lib} {r[f'sgemm_{lib}_gflops']:.0f}" for lib in SGEMM_LIBRARIES
                      if r[f"sgemm_{lib}_gflops"] == r[f"sgemm_{lib}_gflops"]) + ")"
                  for t, r in sub.groupby("threads").first().iterrows()))
        for kind, what in (("sgemm", "compute-bound"), ("stream", "memory-bound")):
            ceilings = sub[sub.threads > 1].groupby("threads")[f"{kind}_efficiency"].first().dropna()
            if len(ceilings):
                print(f"the machine's ceiling for parallel efficiency, {what} (independent one-thread {kind}s): " +
                      ", ".join(f"{e:.3f} at {t} threads" for t, e in ceilings.items()))
        for t, row in sub[sub.threads > 1].groupby("threads").first().iterrows():
            if row.rounds_core_lost:
                print(f"at {t} threads a core was missing in {row.rounds_core_lost} of {args.repeats} rounds (the round's "
                      f"compute-bound ceiling fell as low as {row.sgemm_efficiency_low:.2f}): medians absorb fewer than half")
        print(format_table(sub))
    print(f"wrote {out}")
    return df


if __name__ == "__main__":
    from .cli import run as _run

    sys.exit(_run(main, prog="python -m parbp.bench"))
