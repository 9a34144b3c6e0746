"""The study's committed results, as the notebooks' results sections read them.

``make study`` runs every notebook at a profile (``parbp.profiles``) and commits what it measured under
figures/ as ``<stem>_<profile>.csv`` and ``.png``; a few experiments write one file with no profile in its name.
A results section never quotes the quick run above it: it asks this module for the most complete run that is
committed (the paper profile, then the full one), shows its figure and table, and writes its findings from those
numbers, so a rerun of the study rewrites them and nbval catches a stored sentence that contradicts a CSV.

    run = committed.latest("05_speedup_batch_1h_mnist")     # the paper run if committed, else the full one
    run.table, run.profile, run.png, run.machine             # its data, which profile, its figure, where measured
    committed.show(run)                                      # the figure, and a line naming the run
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .results import FIGURES

PROFILES = ("paper", "full")  # most complete first


@dataclass(frozen=True)
class Run:
    """One committed result: a CSV, the figure drawn from it (if any) and the profile that measured it."""

    stem: str
    profile: str | None  # None: the experiment writes one file, whatever the profile
    csv: Path
    table: pd.DataFrame

    @property
    def png(self) -> Path | None:
        """The figure drawn from the CSV, if there is one."""
        return png if (png := self.csv.with_suffix(".png")).exists() else None

    @property
    def machine(self) -> str:
        """Where it was measured: the CPU (and GPU) named in its rows, or "unrecorded"."""
        def named(column):
            values = self.table[column].dropna().astype(str).unique() if column in self.table else ()
            return ", ".join(v for v in values if v not in ("", "none", "nan"))
        cpu, gpu = next((n for n in map(named, ("env_cpu", "cpu", "machine")) if n), ""), named("env_gpu")
        return "; ".join(n for n in (cpu, gpu and f"GPU {gpu}") if n) or "unrecorded"

    @property
    def name(self) -> str:
        """The file as the README and the notebooks name it: figures/<file>."""
        return self.csv.relative_to(self.csv.parents[1]).as_posix()

    def describe(self) -> str:
        """A line naming the file, the run and the machine."""
        run = f"the {self.profile} profile's run" if self.profile else "its committed run"
        where = "" if self.machine == "unrecorded" else f", measured on {self.machine}"
        return f"{self.name}: {run}, {len(self.table)} rows{where}"


def candidates(stem: str, folder: Path = FIGURES) -> list[Path]:
    """The files that could hold ``stem``'s results, most complete first."""
    names = [stem] if stem.endswith(".csv") else [*(f"{stem}_{p}.csv" for p in PROFILES), f"{stem}.csv"]
    return [folder / name for name in names]


def latest(stem: str, folder: Path = FIGURES) -> Run:
    """The most complete committed run of ``stem`` (a figure's name without its profile, or a file name)."""
    tried = candidates(stem, folder)
    if csv := next((c for c in tried if c.exists()), None):
        return Run(stem, next((p for p in PROFILES if csv.stem == f"{stem}_{p}"), None), csv, pd.read_csv(csv))
    raise FileNotFoundError(f"no committed results for {stem!r}: none of {', '.join(p.name for p in tried)} is in "
                            f"{folder} (make study PROFILE=full writes them)")


def show(run: Run) -> None:
    """Display the run's figure, under a line that names the file, the profile and the machine."""
    from IPython.display import Image, display

    print(run.describe())
    if run.png is not None:
        display(Image(filename=str(run.png)))


# ---------------------------------------------------------------------------------------------------
# The README's headline: one line per experiment, every number read from its committed run
# ---------------------------------------------------------------------------------------------------
def _where(run: Run) -> str:
    """The machine (where the CSV records one) and the file."""
    return f"`{run.name}`" if run.machine == "unrecorded" else f"{run.machine}; `{run.name}`"


def _ten_x(folder: Path) -> str:
    run, like_run = latest("05_speedup_batch_2h_mnist", folder), latest("03_example_threads.csv", folder)
    t, like = run.table, like_run.table
    top = t[t.batch == t.batch.max()].set_index("impl")
    return (f"- **The paper's ≈ 10× speedup** (notebooks 03 and 05, Net-2h): over the serial per-example loop at batch "
            f"{int(t.batch.max()):,}, `threads` on {int(top.loc['threads', 'threads'])} cores is "
            f"{top.loc['threads', 'speedup']:.2f}× and `blas-parallel` {top.loc['blas-parallel', 'speedup']:.2f}× "
            f"(the {run.profile} run; {_where(run)}); most of it is batching (a GEMM instead of a GEMV per "
            f"example), not the cores: the paper's own design, the per-example loop threaded over examples, is "
            f"{like.speedup.median():.2f}× on {int(like.threads.iloc[0])} threads (median of {len(like)} rounds, "
            f"{like.speedup.min():.2f}-{like.speedup.max():.2f}; {_where(like_run)}).")


def _accuracy(folder: Path) -> str:
    run = latest("08_accuracy_summary", folder)
    r = run.table.iloc[0]
    return (f"- **Accuracy in the paper's setting** (notebook 08, the {run.profile} run): the grid search on the "
            f"validation split picks lr {r.lr:g}; Net-{r.net}, batch {int(r.batch_size)}, {int(r.epochs)} epochs give "
            f"**{100 * r.test_acc:.2f} %** on the MNIST test set (`{run.name}`).")


def _span(values, fmt: str = ".2f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


def _seed003(folder: Path) -> str:
    run = latest("06_seed003_table", folder)
    t = run.table.set_index(["method", "processes"]).test_acc.mul(100)
    sync, asyn = t.loc["sync"].sort_index(), t.loc["async"].sort_index()
    return (f"- **Seed 003 at its scale** (notebook 06, the {run.profile} run): serial reaches **{t.loc[('serial', 1)]:.2f} %** "
            f"(seed: 88.8 %); all-reduce gives {_span(t.loc['allreduce'])} % "
            f"on {sync.index.min()}-{sync.index.max()} processes; parameter averaging gives "
            + ", ".join(f"{a:.1f} %" for a in sync) + f" on {', '.join(map(str, sync.index))} processes (the seed's sync "
            f"reached 92 %) and the parameter server " + ", ".join(f"{a:.1f} %" for a in asyn)
            + f" with {', '.join(map(str, asyn.index))} processes (`{run.name}`; why: "
            "`figures/06_seed003_explain_paper.csv`).")


def _data_vs_model(folder: Path) -> str:
    run = latest("07_goals", folder)
    dp, mp = run.table[run.table.method == "data parallel"].iloc[0], run.table[run.table.method == "model parallel"]
    best, plain = mp.loc[mp.vs_serial.idxmax()], mp[mp.schedule == "plain"].iloc[0]
    worst_idle = (mp.idle_measured - mp.idle_predicted).abs().max()
    return (f"- **Data against model parallelism** (notebook 07, seed 004; Net-{dp.net}, batch {int(dp.batch_size):,}, "
            f"{int(dp.engines)} engines, {int(dp.rounds)} rounds): data parallel trains at **{dp.vs_serial:.2f}×** serial, "
            f"model parallel at {plain.vs_serial:.2f}× plain and at best {best.vs_serial:.2f}× ({best.schedule}, "
            f"m = {int(best.micro_batches)}), where the unequal stages cap it at {best.ceiling_vs_serial:.2f}×; the "
            f"measured idle fraction matches the schedule's prediction within {worst_idle:.3f} ({_where(run)}).")


def _past_one_machine(folder: Path) -> str:
    tp = latest("07_tensor_parallel_goal.csv", folder).table.set_index("method")
    hosts = latest("07_hosts_validation.csv", folder).table
    held = hosts[hosts.held_out].groupby("axis").rel_error.apply(lambda e: e.abs().median()).mul(100)
    return (f"- **Past one machine** (notebook 07, section 7): tensor parallelism (Megatron-style layer pairs over MPI) "
            f"trains at **{tp.loc['tensor parallel', 'vs_serial']:.2f}×** serial beside data parallelism's "
            f"{tp.loc['data parallel', 'vs_serial']:.2f}× on the same {int(tp.loc['tensor parallel', 'engines'])} "
            f"engines (`figures/07_tensor_parallel_goal.csv`); across emulated hosts (network namespaces, shaped links), "
            f"the alpha-beta model predicts the held-out link settings within a median of "
            + ", ".join(f"{e:.0f} % ({a})" for a, e in held.items()) + " (`figures/07_hosts_validation.csv`).")


def _compression(folder: Path) -> str:
    run = latest("09_goals", folder)
    g = run.table.set_index("goal").value
    pruned, lost, smaller = (g.filter(like=goal).iloc[0] for goal in (
        "% of weights removed by P", "points lost by that round", "P+Q+H times smaller"))
    return (f"- **Seed 002's compression** (notebook 09, the {run.profile} run's trained Net-1h): pruning removes "
            f"**{pruned:.1f} %** of the weights for {lost:.2f} points of test accuracy; pruning, k-means sharing and "
            f"Huffman coding make it **{smaller:.0f}× smaller** than float32 (Deep Compression: 40× for LeNet-300-100; "
            f"`{run.name}`).")


def _gpu(folder: Path) -> str:
    from .experiments import BASELINE, with_speedup

    try:
        run = latest("bench_gpu.csv", folder)
    except FileNotFoundError:
        return "- **GPU (the seed's ≈ 20×)**: not measured yet: no GPU has run the campaign (*Running the GPU campaign*)."
    s = with_speedup(run.table)
    cuda = s[(s.impl == "numba-cuda") & (s.net == "1h") & s.speedup.notna()].sort_values("batch")
    fastest = s[s.device == "gpu"].loc[lambda d: d.speedup.idxmax()]
    return (f"- **GPU (the seed's ≈ 20×)**: the paper's five CUDA kernels (`numba-cuda`, Net-1h) over `{BASELINE}` on "
            f"the same machine are " + ", ".join(f"{r.speedup:.0f}× at batch {int(r.batch):,}" for r in cuda.itertuples())
            + f"; the fastest GPU trainer, `{fastest.impl}`, reaches {fastest.gflops:,.0f} GFLOP/s on Net-{fastest.net} "
            f"at batch {int(fastest.batch):,} (GPU {', '.join(s.env_gpu.dropna().unique())}, CPU "
            f"{', '.join(s.env_cpu.unique())}; `figures/bench_gpu.csv`).")


def cpu_speed(folder: Path = FIGURES) -> str:
    """The README's table of CPU speed per machine (``bench.by_machine`` of ``figures/bench_cpu.csv``): the best
    matrix trainer at each batch and thread count against PyTorch and the best sgemm, one block per CPU model."""
    from .bench import by_machine

    t = by_machine(latest("bench_cpu.csv", folder).table)
    lines = ["| CPU | batch | threads | best trainer | ms/step | PyTorch ms | time ÷ PyTorch's | ÷ best sgemm "
             "| sgemm GFLOP/s | `threads` par. eff. | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cpu, g in t.groupby("cpu", sort=False):
        for i, r in enumerate(g.itertuples()):
            eff = "" if r.threads == 1 else f"{r.threads_efficiency:.2f}"
            lines.append(f"| {cpu if i == 0 else ''} | {r.batch:,} | {r.threads} | {r.best} | {r.best_ms:.3g} | "
                         f"{r.torch_ms:.3g} | {r.best_over_torch_time:.2f} | {r.best_vs_sgemm:.2f} | "
                         f"{r.sgemm_gflops:.0f} ({r.sgemm_best}) | {eff} | {r.loadavg:.1f} |")
    return "\n".join(lines) + "\n"


HEADLINE = (_ten_x, _accuracy, _seed003, _data_vs_model, _past_one_machine, _compression, _gpu)


def headline(folder: Path = FIGURES) -> str:
    """The README's headline results, each line written from the committed run it names."""
    return "\n".join(line(folder) for line in HEADLINE) + "\n"
