"""Benchmark: time per SGD step of every trainer, as GFLOP/s and as ratios measured side by side.

    python -m parbp.bench --net 2h --batch 100 1000 --impl all --threads 1 2

Every trainer steps on synthetic data shaped like the dataset, timed in interleaved rounds (``timing.side_by_side``:
a burst of load slows every configuration alike); its time is the median of its samples. The same rounds time what
the ratios divide by: the best 2048³ float32 GEMM of numpy, PyTorch and MKL (vs_sgemm), PyTorch's step (vs_torch:
above 1 is faster), the trainer on one thread (efficiency), and the machine's own ceilings (``_Independent``),
with the rounds that lost a core (``CORE_LOST``: on a shared VM one is taken away at times).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from . import blas, envinfo, results, trainers
from .blas import blas_threads
from .cli import Parser, check_choice, positive_int
from .data import NAMES, dims
from .nets import HIDDEN, flops_per_step, layer_sizes
from .results import FIGURES
from .timing import side_by_side

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
    """A trainer name with options of its own: ``"hybrid:groups=2"`` → ``("hybrid", {"groups": 2})``."""
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


# -- What one sample times -------------------------------------------------------------------------
class _Sgemm:
    """A float32 product (rows × n)·(n × n) at ``threads`` threads by numpy (OpenBLAS), PyTorch or MKL."""

    def __init__(self, threads, n=SGEMM_N, device="cpu", library="numpy", rows=None):
        rows = rows or n
        self.threads, self.flops = threads, 2 * rows * n * n
        check_choice("sgemm library", library, SGEMM_LIBRARIES)
        if device == "gpu" or library == "torch":
            import torch

            if device == "gpu" and not torch.cuda.is_available():
                raise RuntimeError("no CUDA device visible to torch")
            a, w = (torch.rand(r, n, device="cuda" if device == "gpu" else "cpu") for r in (rows, n))
            out = torch.empty_like(a)

            def run():
                if device == "gpu":
                    return torch.mm(a, w, out=out), torch.cuda.synchronize()
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                torch.mm(a, w, out=out)

            self._run = run
            return
        if library == "mkl" and "mkl" not in blas.available_backends():
            raise RuntimeError("MKL is not installed (pip install 'parbp[mkl]')")
        rng = np.random.default_rng(0)
        a, w = (rng.random((r, n), dtype=np.float32) for r in (rows, n))
        out = np.empty_like(a)
        self._run = lambda: blas.gemm_into(a, w, out, backend="mkl" if library == "mkl" else "openblas")

    def __call__(self):
        with blas_threads(self.threads):
            self._run()


class _Independent:
    """``workers`` one-thread copies of a kernel at once, each on its own arrays: their parallel efficiency is the
    machine's ceiling, compute-bound ("sgemm", an n×n matmul) or memory-bound ("stream", ``a + 1``)."""

    def __init__(self, workers, kind, n=SGEMM_N):
        rng = np.random.default_rng(0)
        shape = (n, n) if kind == "sgemm" else (STREAM_MB * 2**20 // 4,)
        self._data = [(rng.random(shape, dtype=np.float32), np.empty(shape, dtype=np.float32)) for _ in range(workers)]
        self._kernel = (lambda a, out: np.matmul(a, a, out=out)) if kind == "sgemm" else \
                       (lambda a, out: np.add(a, 1.0, out=out))
        self._pool = ThreadPoolExecutor(max(1, workers - 1))  # its threads start with the first task

    def __call__(self):
        with blas_threads(1):
            futures = [self._pool.submit(self._kernel, *data) for data in self._data[1:]]
            self._kernel(*self._data[0])
            for f in futures:
                f.result()

    def close(self):
        self._pool.shutdown()


class _Steps:
    """One trainer stepping on a fixed synthetic minibatch (the loss it returns forces any device sync)."""

    def __init__(self, impl, net, batch, threads, n_in, n_out, dtype, device, options, seed=0):
        self.config = dict(impl=impl, threads=threads, batch=batch, net=net, n_in=n_in, n_out=n_out, dtype=dtype,
                           device=device)
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
        self.flops, self.epoch_steps = flops_per_step(self.trainer.sizes, batch), math.ceil(EPOCH_EXAMPLES / batch)

    def __call__(self):
        # a small learning rate keeps the weights (and so the speed of exp) near where training starts
        with blas_threads(1) if self.pin_blas else contextlib.nullcontext():
            return self.trainer.step(self.X, self.Y, 1e-3)

    def row(self, samples) -> dict:
        """This configuration's time from its samples (their median): per step, per epoch and as GFLOP/s."""
        sec = float(np.median(samples))
        return dict(self.config, ms_per_step=sec * 1e3, s_per_epoch=sec * self.epoch_steps,
                    gflops=self.flops / sec / 1e9, samples=len(samples), ms_rounds=rounds_text(samples))

    def gemm_backend(self) -> tuple[str, str]:
        """(the BLAS this trainer's products ran on, why) as of its last step."""
        if hasattr(self.trainer, "gemm_backend"):
            return self.trainer.gemm_backend, self.trainer.gemm_reason
        return {"torch": ("torch", "PyTorch's own (MKL, linked into it)"), "numpy": ("openblas", "numpy's matmul"),
                "serial-example": ("none", "numba matrix-vector loops")}.get(
                    self.trainer.name, ("own", f"{self.trainer.name}'s own BLAS"))

    def close(self):
        self.trainer.close()


# timing.side_by_side with the benchmark's settings (slow configurations stop early)
_time_side_by_side = functools.partial(side_by_side, min_sample_s=MIN_SAMPLE_S, rewarm_s=REWARM_S, max_s=MAX_CONFIG_S)


# -- The Python API --------------------------------------------------------------------------------
def sgemm_gflops(threads: int = 1, n: int = SGEMM_N, repeats: int = 5, device: str = "cpu",
                 library: str = "numpy") -> float:
    """This machine's float32 GEMM speed through ``library`` (``SGEMM_LIBRARIES``): n×n, median of ``repeats``."""
    s = _Sgemm(threads, n, device, library)
    return s.flops / np.median(_time_side_by_side([s], repeats, warmup=1)[0]) / 1e9


def run(impls, nets=("2h",), batches=(100, 1000), threads=(1,), n_in: int = 784, n_out: int = 10,
        dtype: str = "float32", device: str = "cpu", repeats: int = 7, warmup: int = 2,
        progress=None, sgemm_n: int = SGEMM_N, compare_torch: bool = True, rewarm_s: float = REWARM_S,
        **options) -> pd.DataFrame:
    """Time every (impl, net, batch, threads) side by side; one row each, columns ``COLUMNS``. "torch" is timed beside
    them for ``vs_torch`` unless ``compare_torch=False``; trainers that cannot run here are left out, the reason
    sent to ``progress`` (print-like; None is silent). ``options`` go to every trainer that accepts them."""
    impls, nets, batches, threads = list(impls), list(nets), [int(b) for b in batches], [int(t) for t in threads]
    if not impls:
        raise ValueError("no implementations to benchmark")
    for name, values in (("batches", batches), ("threads", threads), ("nets", nets)):
        if not values:
            raise ValueError(f"{name} is empty")
    if any(b < 1 for b in batches) or any(t < 1 for t in threads):
        raise ValueError(f"batches and threads must be positive, got {batches} and {threads}")
    check_choice("device", device, ("cpu", "gpu"))
    say = progress or (lambda *a: None)

    nets = [n if isinstance(n, str) else tuple(int(s) for s in n) for n in nets]  # hashable keys
    plan = _plan(impls, nets, batches, threads, compare_torch, say, options)
    counts = sorted({t for _, _, _, t in plan})
    fns, references = [], {}
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
            except (trainers.TrainerUnavailable, RuntimeError, ImportError) as e:
                say(f"skipping {impl} (net {net}, batch {batch}, threads {t}): {e}")
        say(f"timing {len(fns)} configurations + sgemm, {repeats} rounds")
        samples = _time_side_by_side([*fns, *references.values()], repeats, warmup, rewarm_s=rewarm_s)
    finally:
        for fn in [*fns, *references.values()]:
            if hasattr(fn, "close"):
                fn.close()
    df = _table(fns, samples, dict(zip(references, samples[len(fns):])), references)
    return df[df.impl.isin(impls)].reset_index(drop=True)


def _plan(impls, nets, batches, threads, compare_torch, say, options) -> list[tuple]:
    """(impl, net, batch, threads) of every configuration to time: the trainers asked for that can run here."""
    plan = []
    for impl in dict.fromkeys([*impls, *(["torch"] if compare_torch else [])]):
        cls = trainers.get(variant(impl)[0])
        ok, why = cls.availability()
        if not ok and not (options.get("simulator") and "simulator" in cls.options):
            # (numba-cuda asked for its simulator stands in for a GPU: the campaign's dry run times it)
            say(f"skipping {impl}: {why}")
            continue
        plan += [(impl, net, batch, t) for net in nets for batch in batches
                 for t in (threads if "threads" in cls.options else [1])]
    return plan


def _table(fns, samples, ref_samples, references) -> pd.DataFrame:
    """One row per timed configuration, with the references timed in the same rounds beside it."""
    times = {k: float(np.median(s)) for k, s in ref_samples.items()}
    library_gflops = {k[1:]: references[k].flops / times[k] / 1e9 for k in times if k[0] == "library"}
    best = {t: max((g, lib) for (lib, tt), g in library_gflops.items() if tt == t) for _, t in library_gflops}
    ceiling = {k: times[k[0], 1] / times[k] for k in times if k[0] in CEILINGS}
    by_round = {k[1]: np.divide(ref_samples["sgemm", 1], s) for k, s in ref_samples.items() if k[0] == "sgemm"}
    load, table = envinfo.load(), []
    for fn, s in zip(fns, samples):
        row, t = fn.row(s), fn.config["threads"]
        sgemm, sgemm_best = best.get(t, (np.nan, ""))
        ratios = by_round.get(t, np.full(1, np.nan))
        table.append(dict(row, vs_sgemm=row["gflops"] / sgemm, sgemm_gflops=sgemm, sgemm_best=sgemm_best,
                          net=row["net"] if isinstance(row["net"], str) else
                          "-".join(map(str, layer_sizes(row["net"], row["n_in"], row["n_out"]))),
                          **{f"sgemm_{lib}_gflops": library_gflops.get((lib, t), np.nan) for lib in SGEMM_LIBRARIES},
                          loadavg=load, **dict(zip(("gemm_backend", "gemm_reason"), fn.gemm_backend())),
                          **{f"{kind}_efficiency": ceiling.get((kind, t), np.nan) for kind in CEILINGS},
                          sgemm_efficiency_low=ratios.min(), rounds_core_lost=int((ratios < 1 - CORE_LOST / t).sum())))
    df = pd.DataFrame(table, columns=COLUMNS)
    ms, threads = df.ms_per_step.to_numpy(float), df.threads.to_numpy(float)  # (float also when empty)
    df["vs_torch"] = _same_config_ms(df, df.impl == "torch", ["net", "batch", "threads"]) / ms
    df["efficiency"] = _same_config_ms(df, df.threads == 1, ["impl", "net", "batch"]) / (ms * threads)
    return df


def _same_config_ms(df, where, keys) -> np.ndarray:
    """For each row, the ms_per_step of the row ``where`` selects that shares its ``keys`` (NaN if none)."""
    return df.join(df[where].groupby(keys).ms_per_step.first().rename("_ms"), on=keys)["_ms"].to_numpy(float)


def measure(impl: str, net="2h", batch: int = 100, threads: int = 1, n_in: int = 784, n_out: int = 10,
            repeats: int = 7, dtype: str = "float32", device: str = "cpu", **options) -> dict:
    """One configuration alone (no torch or sgemm alongside): a dict with ms_per_step, gflops, ..."""
    if why := trainers.why_unavailable(impl):
        raise trainers.TrainerUnavailable(f"trainer {impl!r} is unavailable here: {why}")
    if "threads" not in trainers.get(impl).options and threads != 1:
        raise ValueError(f"trainer {impl!r} takes no threads option; measure it at threads=1")
    fn = _Steps(impl, net, int(batch), int(threads), n_in, n_out, dtype, device, options)
    try:
        return fn.row(_time_side_by_side([fn], repeats, warmup=2)[0])
    finally:
        fn.close()


def rounds_text(samples) -> str:
    """A configuration's samples in milliseconds, round by round (the rounds interleave every configuration, so
    two rows' samples divided round by round give a ratio's spread; ``round_times`` reads them back)."""
    return " ".join(f"{1e3 * s:.5g}" for s in samples)


def round_times(text) -> np.ndarray:
    """The milliseconds per step of each round, from ``rounds_text``; empty for a row recorded without them."""
    return np.array(text.split() if isinstance(text, str) else [], dtype=float)


def gemm_fixed_cost(rows=(10, 25, 50, 100, 200, 400), n: int = 1024, repeats: int = 7,
                    backend: str = "openblas") -> tuple[pd.DataFrame, dict]:
    """How a one-thread (rows × n)·(n × n) GEMM's time grows with rows: (table, fit t ≈ fixed_ms + per_row_ms·rows).
    BLAS packs the whole weight matrix whatever the rows, so splitting the examples p ways pays ``fixed`` p times."""
    rows = [int(r) for r in rows]
    if len(rows) < 2 or min(rows) < 1:
        raise ValueError(f"rows needs at least two positive sizes to fit a line, got {rows}")
    blas.cblas_gemm(np.float32, backend)  # an unknown backend fails here, naming the valid ones
    library = "numpy" if backend == "openblas" else backend
    samples = _time_side_by_side([_Sgemm(1, n, library=library, rows=r) for r in rows], repeats, 2, rewarm_s=0.0)
    ms = [float(np.median(s)) * 1e3 for s in samples]
    fixed, per_row = fit_fixed_cost(rows, ms)
    table = pd.DataFrame({"rows": rows, "ms": ms, "gflops": [2 * r * n * n / (m / 1e3) / 1e9 for r, m in zip(rows, ms)],
                          "fixed_share": [fixed / m for m in ms]})
    return table.assign(backend=backend), {"fixed_ms": fixed, "per_row_ms": per_row, "n": n, "backend": backend}


def fit_fixed_cost(rows, ms) -> tuple[float, float]:
    """The least-squares line t(rows) ≈ fixed + per_row·rows through measured times: (fixed_ms, per_row_ms)."""
    per_row, fixed = np.polyfit(np.asarray(rows, dtype=float), np.asarray(ms, dtype=float), 1)
    return float(fixed), float(per_row)


def plot_gemm_fixed_cost(table: pd.DataFrame, n: int = 1024):
    """``gemm_fixed_cost``'s table (one or several backends) on log axes: the time per product with its fitted line,
    and the share of it that is fixed (what each of p workers pays again when the examples are split)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, (ax_ms, ax_share) = plt.subplots(1, 2, figsize=(9, 3.6))
    r = np.geomspace(table.rows.min(), table.rows.max(), 100)
    top = 1.0  # a share above 1 is noise (the fit's fixed part exceeds a measured time): shown, not clipped
    for backend, rows in table.groupby(table.get("backend", pd.Series("BLAS", index=table.index)), sort=False):
        fixed, per_row = fit_fixed_cost(rows.rows, rows.ms)
        color = ax_ms.plot(rows.rows, rows.ms, "o", label=f"{backend}, measured")[0].get_color()
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
    """This run's rows, then those ``path`` holds from other CPU models (``env_cpu``): the latest run of each."""
    try:
        old = pd.read_csv(results.redirect(path))
    except (OSError, ValueError):
        return df
    if "env_cpu" not in old.columns or "env_cpu" not in df.columns:
        return df
    others = old[~old.env_cpu.isin(set(df.env_cpu))]
    return pd.concat([df, others], ignore_index=True) if len(others) else df


def _racer(impl: str) -> bool:
    """In ``by_machine``'s race: this study's exact matrix trainers on the CPU (variants too), not baselines."""
    name = impl.split(":")[0]
    cls = trainers.get(name) if name in trainers.names() else None  # not registered: e.g. torch-cuda
    return cls is not None and cls.device == "cpu" and cls.matrix and cls.exact


def by_machine(df: pd.DataFrame) -> pd.DataFrame:
    """Per CPU model, batch and thread count: the best matrix trainer against PyTorch and against the
    best sgemm, and the parallel efficiency of ``threads`` (the paper's design), with the BLAS each used."""
    rows, cpu = [], df.get("env_cpu", "this machine")
    for (machine, net, batch, t), g in df.assign(env_cpu=cpu).groupby(["env_cpu", "net", "batch", "threads"]):
        ours = g[g.impl.map(_racer)]
        if ours.empty:
            continue
        best = ours.loc[ours.ms_per_step.idxmin()]
        torch_ms = next(iter(g[g.impl == "torch"].ms_per_step), np.nan)
        rows.append({"cpu": machine, "net": net, "batch": batch, "threads": t, "best": best.impl,
                     "best_ms": best.ms_per_step, "torch_ms": torch_ms,
                     "best_over_torch_time": best.ms_per_step / torch_ms, "best_vs_sgemm": best.vs_sgemm,
                     "sgemm_best": best.get("sgemm_best", ""), "sgemm_gflops": best.sgemm_gflops,
                     "threads_efficiency": next(iter(g[g.impl == "threads"].efficiency), np.nan),
                     "gemm_backend": best.get("gemm_backend", ""), "blas": best.get("env_blas_kernels", ""),
                     "loadavg": best.get("loadavg", np.nan)})
    return pd.DataFrame(rows)


def format_table(df: pd.DataFrame) -> str:
    names = {"ms_per_step": "ms/step", "s_per_epoch": "s/epoch", "gflops": "GFLOP/s", "vs_sgemm": "÷ sgemm",
             "vs_torch": "÷ torch", "efficiency": "par. eff."}
    show = df[["impl", "threads", "batch", *names]].rename(columns=names)
    return show.to_string(index=False, float_format=lambda v: f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}")


def _impl(text: str) -> str:
    if text != "all":
        try:
            variant(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_args(argv=None) -> argparse.Namespace:
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
    p.add_argument("--out", type=Path, default=None,
                   help="CSV path (default figures/bench_cpu.csv, or figures/bench_gpu.csv with --device gpu)")
    return p.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    everything = gpu_impls() if args.device == "gpu" else cpu_impls()
    impls = list(dict.fromkeys(i for impl in args.impl for i in (everything if impl == "all" else [impl])))
    n_in, n_out = dims(args.dataset)
    df = run(impls, args.net, args.batch, args.threads, n_in=n_in, n_out=n_out, dtype=args.dtype,
             device=args.device, repeats=args.repeats, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
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
                print(f"at {t} threads a core was missing in {row.rounds_core_lost} of {args.repeats} rounds (the "
                      f"round's compute-bound ceiling fell as low as {row.sgemm_efficiency_low:.2f}): medians absorb "
                      "fewer than half")
        print(format_table(sub))
    print(f"wrote {out}")
    return df


if __name__ == "__main__":
    from .cli import run as _run

    sys.exit(_run(main, prog="python -m parbp.bench"))
