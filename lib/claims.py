"""Every checkable claim of the seeds, as data, with the rule that judges it from the committed CSVs.

A claim names its seed, where the seed says it, the seed's number (when it gives one), the figure whose CSV holds
ours, and a ``check`` that reads that CSV and returns our number and a verdict:

* ``reproduced``: ours agrees with the seed within the stated tolerance;
* ``differs``: it does not, and the verdict says by how much and why;
* ``not measurable here``: this machine cannot measure it (no GPU, 2 cores); the verdict says what would;
* ``not measured yet``: the CSV is not in figures/; the verdict names the command that makes it.

``table()`` runs every check; notebook 10 writes the result. No number of ours is typed here: each comes from
a CSV in ``figures/`` (the ``paper`` profile's file when there is one, else the default profile's) or, for the
network sizes, from ``parbp.nets``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import nets, results, seed003
from .results import FIGURES

LABELS = ("paper", "full")  # the profile labels in figure names, the paper profile's first
STUDY = "make study (or: python -m parbp.study --only {nb})"


class Missing(Exception):
    """A CSV that is not in figures/ yet; the message says what makes it."""


@dataclass
class Outcome:
    ours: float | None
    verdict: str    # reproduced, differs, not measurable here, not measured yet
    why: str
    source: str = ""


class Figures:
    """The committed CSVs, each found by its stem: ``stem_paper.csv``, else ``stem_full.csv``, else ``stem.csv``."""

    def __init__(self, root: Path | str = FIGURES):
        self.root = Path(root)

    def path(self, stem: str, notebook: str) -> Path:
        for name in [f"{stem}_{label}.csv" for label in LABELS] + [f"{stem}.csv"]:
            if (self.root / name).exists():
                return self.root / name
        raise Missing(f"not measured yet: no figures/{stem}_{{paper,full}}.csv; run {STUDY.format(nb=notebook)}")

    def read(self, stem: str, notebook: str) -> tuple[pd.DataFrame, str]:
        path = self.path(stem, notebook)
        return pd.read_csv(path), f"figures/{path.name}"


@dataclass
class Claim:
    seed: str
    where: str
    claim: str
    claimed: float | None
    figure: str
    tolerance: str
    check: Callable[[Figures], Outcome]


#: how far repeat runs of one timing move on the shared 2-core VM (two paper-profile runs, docs/measurements.md):
#: a timing verdict whose margin is smaller than this says so, since a rerun may flip it
NOISE = 0.10
BORDERLINE = "borderline"


def within(ours: float, claimed: float, tol: float, unit: str = "", noise: float = 0.0) -> tuple[str, str]:
    """|ours - claimed| <= tol; with ``noise`` (a timing's run-to-run spread, relative) a margin to the
    tolerance's edge smaller than that spread is called borderline."""
    ok = abs(ours - claimed) <= tol
    why = f"|{ours:.4g} - {claimed:.4g}|{unit} = {abs(ours - claimed):.3g} {'<=' if ok else '>'} {tol:g}"
    if noise and abs(abs(ours - claimed) - tol) <= noise * abs(ours):
        why += f"; {BORDERLINE}: a rerun's ±{noise:.0%} moves it across the tolerance's edge"
    return ("reproduced" if ok else "differs"), why


def faster(ratio: float, noise: float = NOISE) -> tuple[str, str]:
    """A timing ratio (> 1: the claimed winner is faster) judged beyond the run-to-run spread: within
    1 ± noise it is a tie, which does not reproduce a claim that one is faster."""
    if ratio > 1 + noise:
        return "reproduced", f"ratio {ratio:.2f} > {1 + noise:.2f}"
    if ratio >= 1 - noise:
        return "differs", f"ratio {ratio:.2f}: a tie within the ±{noise:.0%} run-to-run spread"
    return "differs", f"ratio {ratio:.2f} < {1 - noise:.2f}: the other way round"


# ---------------------------------------------------------------------------------------------------------
# seeds 000 (slides) and 001 (paper): the network sizes, threads, BLAS, CUDA, Theano


def n_params(net: str, claimed: float) -> Callable[[Figures], Outcome]:
    def check(fig):
        ours = nets.n_params(nets.layer_sizes(net, 784, 10))
        verdict, why = within(ours / claimed, 1.0, 0.02, " (ratio)")
        return Outcome(ours, verdict, f"{why}; the seed rounds (weights + biases)", "parbp.nets")
    return check


def training_examples(fig):
    df, src = fig.read("02_training", "02")
    ours = float(df.n_train.max())
    verdict, why = within(ours, 50_000, 0, " examples")
    return Outcome(ours, verdict, why, src)


def _speedups(fig, impl: str, stem="05_speedup_threads_1h_mnist") -> tuple[pd.DataFrame, str]:
    df, src = fig.read(stem, "05")
    df = df[df.impl == impl]
    if df.empty:
        raise Missing(f"not measured yet: no {impl} rows in {src}; run {STUDY.format(nb='05')}")
    one = df[df.threads == 1].set_index("batch").s_per_epoch
    top = df[df.threads == df.threads.max()].set_index("batch").s_per_epoch
    return pd.DataFrame({"speedup": one / top, "threads": df.threads.max(), "s_top": top}).dropna(), src


def threads_10x(fig):
    """The seed's serial implementation is the per-example loop; its threads run over the examples of a batch."""
    df, src = fig.read("05_speedup_batch_2h_mnist", "05")
    t = df[(df.impl == "threads") & (df.threads == df.threads.max())].set_index("batch").speedup
    if t.empty:
        raise Missing(f"not measured yet: no threads rows in {src}; run {STUDY.format(nb='05')}")
    ours, top = float(t[t.index.max()]), int(df.threads.max())
    verdict, why = within(ours, 10, 2, "x", noise=NOISE)
    return Outcome(ours, verdict, f"Net-2h, threads on {top} cores over the serial per-example loop at batch "
                   f"{int(t.index.max())}: {why} (mean over batches {[int(b) for b in t.index]}: {t.mean():.1f}x); "
                   f"on {top} cores most of it is batching (GEMM instead of GEMV), not the cores", src)


def time_falls_with_smaller_batch(fig):
    df, src = fig.read("05_time_per_epoch_1h_mnist", "05")
    df = df[(df.impl == "threads") & (df.threads == df.threads.max())].sort_values("batch")
    rho = float(pd.Series(df.batch.values).corr(pd.Series(df.s_per_epoch.values), method="spearman"))
    if rho > 0:
        return Outcome(rho, "reproduced", f"time per epoch rises with the batch (Spearman {rho:+.2f})", src)
    return Outcome(rho, "differs", f"time per epoch falls as the batch grows (Spearman {rho:+.2f}): here a batch "
                   "is one GEMM, which gets more efficient with size; the seed's per-example loops did not", src)


def blas_faster(fig):
    df, src = fig.read("05_time_per_epoch_1h_mnist", "05")
    top = df.threads.max()
    t = df[df.threads == top].pivot_table(index="batch", columns="impl", values="s_per_epoch")
    ratio = (t["threads"] / t["blas-parallel"]).dropna()
    ours = float(ratio.median())
    verdict, why = faster(ours)
    return Outcome(ours, verdict, f"blas-parallel is {ours:.2f}x as fast as threads at {top} threads "
                   f"(median over batches {[int(b) for b in ratio.index]}; {why})" + ("" if verdict == "reproduced" else
                   "; here the threads trainer also runs each thread's slice as a GEMM"), src)


def blas_flat(fig):
    blas, src = _speedups(fig, "blas-parallel")
    spread = float(blas.speedup.max() / blas.speedup.min())
    verdict = "reproduced" if spread <= 1.25 else "differs"
    return Outcome(spread, verdict, f"blas-parallel speedup over its 1 thread ranges {blas.speedup.min():.2f}-"
                   f"{blas.speedup.max():.2f}x over batches {[int(b) for b in blas.index]} (max/min {spread:.2f}, tolerance 1.25)"
                   + ("" if verdict == "reproduced" else ": small batches leave a GEMM too small to split"), src)


def blas_less_than_threads(fig):
    blas, src = _speedups(fig, "blas-parallel")
    thr, _ = _speedups(fig, "threads")
    ours = float(blas.speedup.mean() / thr.speedup.mean())
    verdict, why = faster(1 / ours)  # the claim: threads' speedup is the larger
    return Outcome(ours, verdict, f"mean speedup blas-parallel {blas.speedup.mean():.2f}x vs threads "
                   f"{thr.speedup.mean():.2f}x at {int(thr.threads.iloc[0])} threads (ratio {ours:.2f}; threads "
                   f"over blas-parallel: {why})", src)


GPU_CSV = "bench_gpu.csv"  # what the GPU campaign (python -m parbp.gpu_campaign) measures on one machine
GPU_COMMAND = ("bash gpu/campaign.sh OUT on a machine with an NVIDIA GPU (it times python -m parbp.bench --device gpu "
               "beside the CPU trainers; README: 'Running the GPU campaign'), then copy OUT/bench_gpu.csv to figures/")
CUDA_KERNELS = "numba-cuda"  # the paper's CUDA implementation: its five kernels (parbp.cuda)
THEANO = ("theano", "pytensor")


def gpu_rows(fig) -> pd.DataFrame:
    """figures/bench_gpu.csv, when it holds GPU rows: the GPU trainers and, from the same run on the same
    machine, the CPU trainers and the per-example serial loop, so a speedup never divides one machine's time
    by another's. Empty when there is no such file or it has no GPU row."""
    path = fig.root / GPU_CSV
    if not path.exists():
        return pd.DataFrame()
    df = pd.read_csv(path)
    if "device" not in df or not (df.device == "gpu").any():
        return pd.DataFrame()
    return df


def _machine(df: pd.DataFrame) -> str:
    name = lambda col: ", ".join(df[col].astype(str).unique()) if col in df else "unknown"  # noqa: E731
    return f"GPU {name('env_gpu')}, CPU {name('env_cpu')}"


def cuda_20x(fig):
    """The paper's CUDA kernels over its baseline, the per-example serial loop, on one machine (Net-1h)."""
    from .experiments import BASELINE, with_speedup

    df = gpu_rows(fig)
    if df.empty:
        return Outcome(None, "not measurable here", f"no GPU measurement (figures/{GPU_CSV}); {GPU_COMMAND}")
    ours = df[(df.net == "1h") & (df.impl == CUDA_KERNELS)]
    base = df[(df.net == "1h") & (df.impl == BASELINE) & (df.threads == 1)]
    s = with_speedup(pd.concat([ours, base])) if len(ours) and len(base) else ours.assign(speedup=np.nan)
    s = s[(s.impl == CUDA_KERNELS) & s.speedup.notna()]
    if s.empty:
        return Outcome(None, "not measured yet", f"figures/{GPU_CSV} has no Net-1h {CUDA_KERNELS} and {BASELINE} rows "
                       f"at a common batch size (the campaign times both in one run); {GPU_COMMAND}")
    best = s.loc[s.speedup.idxmax()]
    verdict, why = within(float(best.speedup), 20, 5, "x", noise=NOISE)
    return Outcome(float(best.speedup), verdict,
                   f"{CUDA_KERNELS} (the paper's five kernels) over {BASELINE} (the paper's baseline: its per-example "
                   f"serial loop) timed in the same run, Net-1h, best of batches "
                   f"{sorted(int(b) for b in s.batch)} (at {int(best.batch)}), on {_machine(df)}; {why}",
                   f"figures/{GPU_CSV}")


def theano_cuda_batch(fig):
    """Theano on the GPU: how much its GFLOP/s grow from the smallest to the largest batch measured."""
    df = gpu_rows(fig)
    if df.empty:
        return Outcome(None, "not measurable here", f"no GPU measurement (figures/{GPU_CSV}); {GPU_COMMAND}")
    theano = df[(df.device == "gpu") & df.impl.isin(THEANO)]
    if theano.empty:
        return Outcome(None, "not measurable here",
                       f"figures/{GPU_CSV} has GPU rows but none for Theano: theano-pymc has no working GPU backend "
                       "for current CUDA, so the campaign times numba-cuda, cupy and torch instead")
    net = "1h" if (theano.net == "1h").any() else theano.net.iloc[0]
    t = theano[theano.net == net].groupby("batch").gflops.max().sort_index()
    if len(t) < 2:
        return Outcome(None, "not measured yet", f"figures/{GPU_CSV} has Theano GPU rows at one batch size only (Net-{net})")
    ours = float(t.iloc[-1] / t.iloc[0])
    grows = t.iloc[-1] / t.iloc[0] >= 10 * (1 + NOISE)  # 'very fast': ten times the throughput, beyond the spread
    return Outcome(ours, "reproduced" if grows else "differs",
                   f"Theano on the GPU ({', '.join(theano.impl.unique())}, Net-{net}): {t.iloc[0]:.3g} GFLOP/s at batch "
                   f"{int(t.index[0])}, {t.iloc[-1]:.3g} at {int(t.index[-1])}, {ours:.1f}x "
                   f"({'>=' if grows else '<'} {10 * (1 + NOISE):.0f}x, ten times beyond the ±{NOISE:.0%} spread), "
                   f"on {_machine(df)}", f"figures/{GPU_CSV}")


def idle_threads(fig):
    df, src = fig.read("04_tiling", "04")
    odd = df[(df.out_cols % 32 != 0)]
    even = df[(df.out_cols % 32 == 0) & (df.out_rows % 32 == 0)]
    ours = float(odd.idle.mean())
    ok = len(odd) and ours > 0.5 and (even.empty or ours > even.idle.mean())
    return Outcome(ours, "reproduced" if ok else "differs",
                   f"layers with {sorted(int(c) for c in odd.out_cols.unique())} outputs (not multiples of 32) leave {ours:.0%} of the "
                   f"launched threads idle on average" + ("" if even.empty else
                   f"; tiles of multiples of 32 leave {even.idle.mean():.0%}"), src)


def theano_both(fig):
    s, src = _speedups(fig, "theano")
    ours = float(s.speedup.median())
    verdict = "reproduced" if ours > 1.2 else "differs"
    return Outcome(ours, verdict, f"Theano's CPU graph runs {ours:.2f}x faster on {int(s.threads.iloc[0])} threads "
                   "than on 1 (median over batches): its GEMMs split the work within each matrix product and across "
                   "the batch's rows at once, i.e. both kinds (tolerance: > 1.2x)", src)


def parallel_same_accuracy(fig):
    t, src = fig.read("06_seed003_table", "06")
    serial = float(t[t.method == "serial"].test_acc.iloc[0])
    ar = t[t.method == "allreduce"]
    if ar.empty:
        raise Missing(f"not measured yet: no allreduce rows in {src}; run {STUDY.format(nb='06')}")
    ours = float((ar.test_acc - serial).abs().max())
    verdict = "reproduced" if ours <= 0.005 else "differs"
    return Outcome(ours, verdict, f"all-reduce on {sorted(ar.processes)} processes ends within {ours:.4f} of the "
                   f"serial test accuracy {serial:.4f} (tolerance 0.005)", src)


# ---------------------------------------------------------------------------------------------------------
# seed 003: the two tables


def seed003_accuracy(method: str, p: int, tol: float = 0.02) -> Callable[[Figures], Outcome]:
    def check(fig):
        t, src = fig.read("06_seed003_table", "06")
        row = t[(t.method == method) & (t.processes == p)]
        if row.empty:
            raise Missing(f"not measured yet: no {method} x{p} row in {src}; run {STUDY.format(nb='06')}")
        ours = float(row.test_acc.iloc[0])
        claimed = float(seed003.SEED_RESULTS.set_index(["method", "processes"]).accuracy[(method, p)])
        verdict, why = within(ours, claimed, tol)
        if verdict == "differs" and method == "sync":
            why += ("; averaging p models each trained on 1/p of the data takes 1/p as many steps per epoch, so in "
                    "5 epochs it trails serial (the seed's sync beat its serial run)")
        if verdict == "differs" and method == "async":
            why += "; with one core per rank missing here, the workers' interleaving (and staleness) differs"
        return Outcome(ours, verdict, f"lr {row.lr.iloc[0]:g} (grid search); {why}", src)
    return check


def seed003_time(fig):
    t, src = fig.read("06_seed003_table", "06")
    at = t.set_index(["method", "processes"]).time_s
    ours = float(at[("sync", 2)] / at[("serial", 1)])
    verdict = "reproduced" if ours > 1 else "differs"
    return Outcome(ours, verdict, f"sync on 2 processes takes {ours:.2f}x the serial time (seed: "
                   f"{10.8651 / 9.0821:.2f}x); timings on a shared 2-core machine are noisy"
                   + ("" if ours > 1 else "; here each rank trains on 1/p of the examples per epoch and the "
                      "parameters are one 3 MB Allreduce through shared memory, so averaging saves time"), src)


def seed003_async_faster(fig):
    t, src = fig.read("06_seed003_table", "06")
    at = t.set_index(["method", "processes"]).time_s
    ours = float(at[("async", 2)] / at[("serial", 1)])
    verdict = "reproduced" if ours < 1 else "differs"
    return Outcome(ours, verdict, f"async on 2 processes takes {ours:.2f}x the serial time (seed 0.83x)"
                   + ("" if ours < 1 else ": here rank 0 only serves, so 2 processes are one worker plus a round "
                      "trip per step"), src)


def seed003_async_degrades(fig):
    t, src = fig.read("06_seed003_table", "06")
    a = t[t.method == "async"].set_index("processes").test_acc
    if not {2, 4} <= set(a.index):
        raise Missing(f"not measured yet: async x2 and x4 in {src}; run {STUDY.format(nb='06')}")
    ours = float(a[2] - a[4])
    verdict = "reproduced" if ours > 0 else "differs"
    return Outcome(ours, verdict, f"test accuracy async x2 {a[2]:.4f}, x4 {a[4]:.4f} (seed: 0.9111, 0.8596)", src)


def seed003_grows(column: str, what: str) -> Callable[[Figures], Outcome]:
    def check(fig):
        u, src = fig.read("06_seed003_usage", "06")
        sync = u[u.method.isin(["serial", "sync"])].sort_values("processes").set_index("processes")[column]
        if len(sync) < 3:
            raise Missing(f"not measured yet: sync on 1-4 processes in {src}; run {STUDY.format(nb='06')}")
        ours = float(sync.iloc[-1] / sync.iloc[0])
        # grows: never falls by more than a point, and ends >= 1.2x serial (a full CPU stays at ~100 %)
        grows = bool(np.all(np.diff(sync.values) > -1.0)) and ours >= 1.2
        verdict = "reproduced" if grows else "differs"
        why = (f"{what} of the machine, serial then sync x2..x{sync.index.max()}: "
               + ", ".join(f"{v:.1f}%" for v in sync.values) + " (tolerance: no step down of over 1 point, "
               "the last >= 1.2x the first)")
        if column.startswith("cpu") and sync.values.max() > 95:
            why += "; this machine has 2 cores: from 2 processes on the CPU is full"
        return Outcome(ours, verdict, why, src)
    return check


# ---------------------------------------------------------------------------------------------------------
# seed 004 (data vs model parallelism) and seed 002 (CMU lecture: compression)


def epochs_to_converge(fig):
    """Model parallelism (every schedule) computes serial's arithmetic, so it must take serial's epochs exactly;
    data parallelism draws each engine's examples from its own shard, a different minibatch order with the same
    expected gradient, so it is held to serial's count within one epoch."""
    s, src = fig.read("07_summary", "07")
    e = s.set_index("method").epochs_to_threshold
    data = e[e.index.str.startswith("data")]
    model = e.drop(data.index)
    same = model.nunique() == 1 and bool((data - e["serial"]).abs().le(1).all())
    why = ("epochs for the validation loss to reach the threshold: "
           + ", ".join(f"{m} {int(v)}" for m, v in e.items())
           + (" (model parallelism computes serial's arithmetic; data parallelism, whose shards order the "
              "examples differently, within one epoch of it)" if same else ""))
    if not same:
        try:  # how far each method's validation loss strays from serial's, epoch by epoch
            h, _ = fig.read("07_history", "07")
            curves = h.pivot_table(index="epoch", columns="method", values="val_loss")
            gap = curves.sub(curves["serial"], axis=0).abs().max()
            why += "; largest gap to serial's validation loss: " + ", ".join(
                f"{m} {g:.1e}" for m, g in gap.drop("serial").items())
            why += " (a method off serial's curve takes other steps, and the threshold sits between epochs)"
        except (Missing, KeyError):
            pass
    return Outcome(float(e.max()), "reproduced" if same else "differs", why, src)


def _goal(fig, *starts: str) -> tuple[pd.Series, str]:
    """The first row of 09's goals whose name starts with one of ``starts`` (09 has named them both ways)."""
    g, src = fig.read("09_goals", "09")
    row = g[g.goal.str.startswith(tuple(starts))]
    if row.empty:
        raise Missing(f"not measured yet: no goal '{starts[0]}...' in {src}; run {STUDY.format(nb='09')}")
    return row.iloc[0], src


def pruning_90(fig):
    removed, src = _goal(fig, "Net-1h: % of weights removed by P", "Net-1h: >= 90 % of weights removed")
    lost, _ = _goal(fig, "Net-1h: points lost by that round", "Net-1h: accuracy lost by P ")
    ok = removed.value >= 90 and lost.value <= 1.0
    return Outcome(float(removed.value), "reproduced" if ok else "differs",
                   f"{removed.value:.1f}% of Net-1h's weights removed, {lost.value:.2f} accuracy points lost "
                   "(tolerance: >= 90 %, <= 1 point)", src)


def deep_compression(fig):
    row, src = _goal(fig, "Net-1h: P+Q+H times smaller")
    ours = float(row.value)
    ok = 49 / 2 <= ours <= 49 * 2
    return Outcome(ours, "reproduced" if ok else "differs",
                   f"Net-1h {ours:.0f}x smaller than float32 (VGG-16: 49x; tolerance: within 2x)"
                   + ("" if ok or ours < 49 else "; an MLP is all fully connected layers, which prune furthest: "
                      "in the seed's own table VGG-16's fc6 alone compresses to 1.10 %, about 91x"), src)


# ---------------------------------------------------------------------------------------------------------

CLAIMS = [
    Claim("000", "slide 'Experiments', network table", "Network1 (784-1024-10) has 800,000 parameters", 800_000,
          "-", "2 %", n_params("1h", 800_000)),
    Claim("000", "slide 'Experiments', network table", "Network2 (784-1024-1024-10) has 1,860,000 parameters",
          1_860_000, "-", "2 %", n_params("2h", 1_860_000)),
    Claim("000", "slide 'MNIST dataset'", "50,000 training examples", 50_000, "02_training.png", "exact",
          training_examples),
    Claim("000", "slide 'Results - Speedup'", "our implementation (threads): average speedup ≈ 10", 10,
          "05_speedup_batch_2h_mnist_{label}.png", "±2x", threads_10x),
    Claim("000", "slide 'Results - Speedup'", "training time decreases as minibatch size decreases", None,
          "05_time_per_epoch_1h_mnist_{label}.png", "sign", time_falls_with_smaller_batch),
    Claim("000", "slide 'Results - Speedup'", "BLAS: parallelizing each matrix product gives even faster results",
          None, "05_time_per_epoch_1h_mnist_{label}.png", "> 1x", blas_faster),
    Claim("000", "slide 'Results - Speedup'", "BLAS: speedup independent of batch size", None,
          "05_speedup_threads_1h_mnist_{label}.png", "max/min <= 1.25", blas_flat),
    Claim("000", "slide 'Results - Speedup'", "BLAS: speedup less than our implementation's", None,
          "05_speedup_threads_1h_mnist_{label}.png", "< 1x", blas_less_than_threads),
    Claim("000", "slide 'Results - Speedup'", "CUDA implementation ≈ 20x speedup", 20, "05_speedup_batch_1h_mnist_{label}.png",
          "±5x", cuda_20x),
    Claim("000", "slide 'Results - Speedup'", "neurons not a multiple of 32: some threads do not participate", None,
          "04_tiling.png", "> 50 % idle", idle_threads),
    Claim("000", "slide 'Results - Speedup'", "Theano apparently combines both types of parallelization", None,
          "05_speedup_threads_1h_mnist_{label}.png", "> 1.2x", theano_both),
    Claim("000", "slide 'Results - Speedup'", "Theano CUDA scales very fast with batch size", None, "-", "-",
          theano_cuda_batch),
    Claim("001", "section 7", "parallel training without significant loss of accuracy", None,
          "06_loss_curves_{label}.png", "0.005", parallel_same_accuracy),
    *[Claim("003", "slide 'Experiment', table 1", f"{m} x{p}: accuracy {a:.4f} after 5 epochs", a,
            "06_loss_curves_{label}.png", "±0.02", seed003_accuracy(m, p))
      for m, p, a in seed003.SEED_RESULTS[["method", "processes", "accuracy"]].itertuples(index=False)],
    Claim("003", "slide 'Conclusion'", "sync is slower than serial (communication overhead)", 10.8651 / 9.0821,
          "06_loss_curves_{label}.png", "> 1x", seed003_time),
    Claim("003", "slide 'Experiment', table 1", "async x2 is faster than serial", 7.5638 / 9.0821,
          "06_loss_curves_{label}.png", "< 1x", seed003_async_faster),
    Claim("003", "slide 'Conclusion'", "async loses accuracy as processes are added", 0.9111 - 0.8596,
          "06_loss_curves_{label}.png", "> 0", seed003_async_degrades),
    Claim("003", "slide 'Experiment', table 2", "memory use grows with the process count (12 % -> 43.3 %)",
          43.3 / 12, "-", "rising", seed003_grows("memory_percent_of_machine", "memory")),
    Claim("003", "slide 'Experiment', table 2", "CPU use grows with the process count (35-40 % -> 65-70 %)",
          67.5 / 37.5, "-", "rising", seed003_grows("cpu_percent_of_machine", "CPU")),
    Claim("004", "section 3", "data and model parallelism: epochs for the loss to hit a threshold", None,
          "07_throughput_{label}.png", "model = serial; data within 1 epoch", epochs_to_converge),
    Claim("002", "slide 'Compressing a network'", "over 90 % of weights can be removed without significant loss",
          90, "09_accuracy_vs_sparsity_{label}.png", ">= 90 %, <= 1 pt", pruning_90),
    Claim("002", "slide 'VGG-16 compression'", "pruning + quantization + Huffman: 49x smaller (VGG-16)", 49,
          "09_compression_table_{label}.csv", "within 2x", deep_compression),
]


def evaluate(claim: Claim, fig: Figures) -> Outcome:
    try:
        return claim.check(fig)
    except Missing as e:
        return Outcome(None, "not measured yet", str(e))
    except KeyError as e:  # the CSV is there but lacks the row the claim needs
        return Outcome(None, "not measured yet", f"not measured yet: no row {e} in the CSV; run make study")


def table(root: Path | str = FIGURES) -> pd.DataFrame:
    """One row per claim: the seed's words and number, ours, the verdict and why, the CSV it came from."""
    fig = Figures(root)
    rows = []
    for c in CLAIMS:
        o = evaluate(c, fig)
        label = next((lb for lb in LABELS if o.source.endswith(f"_{lb}.csv")), "full")
        rows.append({"seed": c.seed, "where": c.where, "claim": c.claim, "claimed": c.claimed, "ours": o.ours,
                     "tolerance": c.tolerance, "verdict": o.verdict, "why": o.why,
                     "figure": c.figure.format(label=label), "source": o.source})
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """The table for the README: seed, claim, theirs, ours, verdict (the reasons stay in the CSV and notebook 10)."""
    def num(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "–"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    lines = ["| seed | claim | seed's number | ours | verdict |", "|---|---|---|---|---|"]
    def verdict(r):  # a verdict the run-to-run spread could flip says so (its reason is in the CSV)
        return f"{r.verdict} ({BORDERLINE})" if BORDERLINE in str(r.why) else r.verdict
    lines += [f"| {r.seed} | {r.claim} | {num(r.claimed)} | {num(r.ours)} | {verdict(r)} |" for r in df.itertuples()]
    counts = df.verdict.value_counts()
    lines += ["", "; ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(df)} claims."]
    return "\n".join(lines) + "\n"


README_SOURCE = "figures/10_against_the_seeds.md"  # the README's block between its BEGIN/END markers


def readme_block(readme: str) -> str:
    """The text between the README's markers (what ``sync_readme`` copied in)."""
    return results.readme_block(readme, README_SOURCE)


def sync_readme(readme: Path | str, generated: Path | str) -> None:
    """Copy notebook 10's markdown table into the README between its markers."""
    results.sync_readme_block(readme, README_SOURCE, Path(generated).read_text())


def main(argv=None) -> int:
    from .cli import Parser

    parser = Parser(prog="python -m parbp.claims", description="Copy figures/10_against_the_seeds.md into README.md")
    parser.add_argument("--readme", type=Path, default=FIGURES.parent / "README.md")
    parser.add_argument("--table", type=Path, default=FIGURES / "10_against_the_seeds.md")
    args = parser.parse_args(argv)
    sync_readme(args.readme, args.table)
    print(f"{args.readme}: against-the-seeds table copied from {args.table}")
    return 0


if __name__ == "__main__":
    from .cli import run

    raise SystemExit(run(main, prog="python -m parbp.claims"))
