"""Helpers for the experiment notebooks: checking their papermill parameters, the derived tables, the plots.

Notebook 05 (speedup, seed 001 §5-6) and 08 (accuracy, seed 001 §5.3) are run by papermill with
parameters from the command line, so every parameter is checked here first: a typo fails in the
first cell with the valid choices, not twenty minutes later in a plot.
"""
from __future__ import annotations

import ast
import functools
import math
import numbers
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd
import seaborn as sns

from . import bench, trainers
from .cli import check_choice, check_positive_int
from .data import NAMES, load
from .nets import layer_sizes, parse_net
from .results import NOTEBOOKS, plain_log_ticks
from .train import fit

BASELINE = "serial-example"  # speedups are over the paper's serial algorithm (seed 001 §3)
TORCH_CUDA = "torch-cuda"    # torch with device="cuda", a name of its own in the figures


# -- Parameter checks ---------------------------------------------------------------------------------
def resolve_path(path, base: Path = NOTEBOOKS) -> Path:
    """An absolute path; a relative one is taken relative to the notebooks folder, as Jupyter does,
    so "../figures" means the repository's figures/ whether papermill runs from notebooks/ or the root."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    base = base if base.is_dir() else Path.cwd()  # parbp installed outside its repository
    return (base / path).resolve()


def from_cli(value):
    """A list given on the papermill command line (``-p batch_sizes "[10, 100]"`` arrives as a string)."""
    if isinstance(value, str) and value.strip().startswith(("[", "(")):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"cannot read {value!r} as a list; write it like [10, 100]") from None
    return value


def _positive_list(name, values, scalar, is_valid, what):
    """A sorted, de-duplicated, non-empty list of values that pass ``is_valid`` (a single value is a list of one)."""
    given = from_cli(values)
    values = [given] if isinstance(given, (str, bytes)) or not hasattr(given, "__iter__") else list(given)
    if not values or not all(not isinstance(v, bool) and isinstance(v, scalar) and is_valid(v) for v in values):
        raise ValueError(f"{name} must be a {what} or a non-empty list of {what}s, got {given!r}")
    return sorted(set(values))


def positive_ints(name: str, values) -> list[int]:
    """A non-empty list of positive integers (batch sizes, thread counts)."""
    return [int(v) for v in _positive_list(name, values, numbers.Integral, lambda v: v >= 1, "positive integer")]


positive_int = check_positive_int  # the notebooks' parameter checks read as ex.positive_int(name, value)


def positive_floats(name: str, values) -> list[float]:
    """A non-empty list of positive finite numbers (learning rates)."""
    return [float(v) for v in _positive_list(name, values, numbers.Real, lambda v: math.isfinite(v) and v > 0,
                                             "positive finite number")]


def check_net(net):
    """ "1h", "2h" (seed 001 §5.2), "64,32" or a list of hidden widths."""
    net = from_cli(net)
    layer_sizes(net, 1, 1)  # raises with the reason for an unknown name or a malformed list
    return parse_net(net) if isinstance(net, str) else net


def check_dataset(name: str) -> str:
    return check_choice("dataset", name, NAMES, unknown=True)


def check_fraction(name: str, value, low: float = 0.0, high: float = 1.0, closed_high: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            low <= value and (value <= high if closed_high else value < high)):
        raise ValueError(f"{name} must be a number in [{low}, {high}{']' if closed_high else ')'}, got {value!r}")
    return float(value)


def resolve_impls(impls) -> tuple[list[str], list[str], dict[str, str]]:
    """(CPU trainers, GPU trainers, {name: why skipped}) to benchmark. ``"auto"`` means every trainer that can
    run here: the CPU family, the library baselines and, with a GPU, the GPU trainers and torch on CUDA.
    Unknown names fail at once; known ones that cannot run here are skipped with the reason.
    ``serial-example`` is always timed too: it is the denominator of every speedup."""
    choices = ["auto", *(n for n in trainers.names() if n != "reference"), TORCH_CUDA]
    impls = from_cli(impls)
    impls = [impls] if isinstance(impls, str) else list(impls)
    unknown = [i for i in impls if i not in choices]
    if not impls or unknown:
        raise ValueError(f"unknown implementation(s) {unknown or impls!r}; choose from {choices}")
    if "auto" in impls:
        impls = [*bench.cpu_impls(), *trainers.gpu(), TORCH_CUDA]
    wanted = list(dict.fromkeys([BASELINE, *impls]))
    skipped = {name: why for name in wanted if (why := _why_unavailable(name))}
    gpu = [n for n in wanted if n not in skipped and (n == TORCH_CUDA or n in trainers.gpu())]
    cpu = [n for n in wanted if n not in skipped and n not in gpu]
    if BASELINE in skipped:
        raise RuntimeError(f"{BASELINE} is needed as the speedup baseline but cannot run: {skipped[BASELINE]}")
    return cpu, gpu, skipped


def _why_unavailable(name: str) -> str:
    why = trainers.why_unavailable("torch" if name == TORCH_CUDA else name)
    if why or name != TORCH_CUDA:
        return why
    import torch

    return "" if torch.cuda.is_available() else "torch sees no CUDA GPU"


# -- Tables -------------------------------------------------------------------------------------------
def run_benchmark(cpu: list[str], gpu: list[str], net, batches, threads, n_in: int, n_out: int,
                  repeats: int, warmup: int = 1, progress=print) -> pd.DataFrame:
    """``parbp.bench.run`` on the CPU trainers, then (if any) on the GPU ones, as one table. One warm-up
    sample is enough: the median of the ``repeats`` is kept anyway. GPU rows get threads = 1 and torch on
    CUDA is renamed ``torch-cuda`` so it never mixes with CPU torch."""
    tables = [bench.run(cpu, [net], batches, threads, n_in=n_in, n_out=n_out, repeats=repeats, warmup=warmup,
                        progress=progress)] if cpu else []
    if gpu:
        df = bench.run([("torch" if g == TORCH_CUDA else g) for g in gpu], [net], batches, [1], n_in=n_in,
                       n_out=n_out, repeats=repeats, warmup=warmup, device="gpu", progress=progress)
        tables.append(df.assign(impl=df.impl.replace({"torch": TORCH_CUDA})))
    return pd.concat(tables, ignore_index=True)


def with_speedup(df: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Add ``speedup``: the baseline's time per step (same net and batch, 1 thread) over each row's."""
    base = df[(df.impl == baseline) & (df.threads == 1)].set_index(["net", "batch"]).ms_per_step
    if base.empty:
        raise ValueError(f"no {baseline} rows at threads=1 to compute speedups from")
    key = pd.MultiIndex.from_arrays([df.net, df.batch])
    return df.assign(speedup=base.reindex(key).to_numpy() / df.ms_per_step.to_numpy())


def fastest_threads(df: pd.DataFrame) -> pd.DataFrame:
    """Each implementation at each batch size with its fastest thread count (one row per impl and batch): not
    simply the most threads, which on a shared machine or at small batches can be slower than fewer."""
    best = df.groupby(["impl", "batch"]).ms_per_step.idxmin()
    return df.loc[best.sort_values().to_numpy()].reset_index(drop=True)


def best_per_batch(df: pd.DataFrame, column: str = "speedup") -> pd.DataFrame:
    """At each batch size, the trainer (and thread count) with the highest ``column``."""
    best = df.loc[df.groupby("batch")[column].idxmax()]
    return best[["batch", "impl", "threads", column]].sort_values("batch").reset_index(drop=True)


def thread_scaling(df: pd.DataFrame, impl: str) -> pd.DataFrame:
    """``impl``'s speedup over the baseline at every batch size (rows) and thread count (columns)."""
    rows = df[df.impl == impl]
    if rows.empty:
        raise ValueError(f"no {impl} rows; the table has {sorted(df.impl.unique())}")
    return rows.pivot_table(index="batch", columns="threads", values="speedup")


@functools.cache
def epoch_examples(dataset: str) -> int:
    """Examples in one epoch of ``dataset``: the rows of its training split (read from the data itself)."""
    return len(load(check_dataset(dataset)).X_train)


def per_epoch(df: pd.DataFrame, examples: int) -> pd.DataFrame:
    """``s_per_epoch`` for an epoch of ``examples`` examples, and that count as ``epoch_examples`` (``parbp.bench``
    counts an epoch as MNIST's 50,000 examples; an epoch of KDD Cup 99 is its own, far longer, training split)."""
    examples = positive_int("examples", examples)
    return df.assign(s_per_epoch=df.ms_per_step / 1e3 * np.ceil(examples / df.batch), epoch_examples=examples)


# -- Plots (seaborn; one figure per question, tidy data beside it via parbp.results.save_figure) ------
def impl_order(df: pd.DataFrame) -> list[str]:
    """Implementations in the registry's order, so colours and legends agree across figures."""
    order = [*trainers.names(), TORCH_CUDA]
    present = set(df.impl)
    return [n for n in order if n in present] + sorted(present - set(order))


# One colour and one marker per trainer, fixed by the registry's order, so a trainer looks the same in every
# figure whichever others it shares the figure with (tab10, then four more that tab10 lacks).
_COLOURS = [*sns.color_palette("tab10"), "black", "darkgoldenrod", "navy", "deeppink"]
_MARKERS = ["o", "X", "s", "P", "D", "^", "v", "<", ">", "p", "*", "h", "d", "8"]


def impl_style(impls) -> tuple[dict, dict]:
    """({impl: colour}, {impl: marker}) for ``impls``: the same pair for a trainer in every figure."""
    fixed = [n for n in [*trainers.names(), TORCH_CUDA] if n != "reference"]
    extra = sorted(set(impls) - set(fixed))  # variants such as "threads:update=partials", after the registry
    slot = {name: i for i, name in enumerate([*fixed, *extra])}
    return ({i: _COLOURS[slot[i] % len(_COLOURS)] for i in impls},
            {i: _MARKERS[slot[i] % len(_MARKERS)] for i in impls})


def _impl_lines(ax, df: pd.DataFrame, x: str, y: str) -> None:
    """One line per implementation, in its fixed colour and marker, no legend (the caller places one)."""
    colours, markers = impl_style(df.impl.unique())
    sns.lineplot(data=df, x=x, y=y, hue="impl", hue_order=impl_order(df), palette=colours, style="impl",
                 style_order=impl_order(df), markers=markers, dashes=False, ax=ax, legend=False)


def impl_legend_handles(impls) -> list:
    """Legend entries for ``impls``, in the registry's order, drawn as in ``_impl_lines``."""
    colours, markers = impl_style(impls)
    order = impl_order(pd.DataFrame({"impl": list(impls)}))
    return [plt.Line2D([], [], color=colours[i], marker=markers[i], label=i) for i in order]


def plot_vs_batch(df: pd.DataFrame, y: str, ylabel: str, title: str, logy: bool = True, hline=None):
    """One line per implementation against minibatch size (log x)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _impl_lines(ax, df, "batch", y)
    ax.set(xscale="log", yscale="log" if logy else "linear", xlabel="minibatch size", ylabel=ylabel, title=title)
    plain_log_ticks(ax)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls="--")
    ax.legend(handles=impl_legend_handles(df.impl.unique()), title=None, fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def plot_speedup_vs_threads(df: pd.DataFrame, title: str, per_row: int = 3):
    """Speedup over the serial baseline against threads, one panel per batch size (``per_row`` to a row),
    with the ideal line, and one legend for the whole figure."""
    data = df[df.groupby(["impl", "batch"]).threads.transform("nunique") > 1]  # timed at several widths
    if data.empty:
        raise ValueError("no implementation was timed at more than one thread count")
    batches = sorted(data.batch.unique())
    cols = min(per_row, len(batches))
    rows = -(-len(batches) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows + 0.4), sharey=True, squeeze=False)
    threads = sorted(data.threads.unique())
    for i, (ax, batch) in enumerate(zip(axes.flat, batches)):
        sub = data[data.batch == batch]
        _impl_lines(ax, sub, "threads", "speedup")
        # linear scaling of the fastest one-thread run: what perfect parallelism would give
        best1 = sub[sub.threads == 1].speedup.max()
        if np.isfinite(best1):
            ax.plot(threads, [best1 * t for t in threads], color="grey", lw=0.8, ls="--")
        ax.set(title=f"batch {batch:,}", xticks=threads, xlabel="threads" if i >= len(batches) - cols else "",
               ylabel=f"speedup over\n{BASELINE}" if i % cols == 0 else "")
    handles = impl_legend_handles(data.impl.unique())
    handles.append(plt.Line2D([], [], color="grey", lw=0.8, ls="--", label="linear from the best 1-thread run"))
    spare = list(axes.flat[len(batches):])
    if spare:  # the legend takes the first empty panel
        spare[0].legend(handles=handles, loc="center", fontsize=8, frameon=False)
        spare[0].axis("off")
        for ax in spare[1:]:
            fig.delaxes(ax)
    fig.suptitle(title)
    fig.tight_layout()
    if not spare:  # no empty panel: the legend goes to the right of the panels
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return fig


FIGURES_05 = ("time_per_epoch", "gflops", "speedup_batch", "speedup_threads")  # notebook 05's figures, by name


def speedup_figure(kind: str, table: pd.DataFrame, title: str):
    """One of notebook 05's figures from its table (the CSV saved beside it): the notebook draws them with
    this, and a committed CSV is redrawn with it. The time per epoch counts the table's ``epoch_examples``."""
    if check_choice("figure", kind, FIGURES_05, unknown=True) == "speedup_threads":
        return plot_speedup_vs_threads(table, f"Speedup against threads, {title}")
    if kind == "time_per_epoch" and "epoch_examples" not in table:
        raise ValueError("the time-per-epoch table needs epoch_examples (experiments.per_epoch adds it)")
    examples = ", ".join(f"{n:,}" for n in table.epoch_examples.unique()) if kind == "time_per_epoch" else ""
    y, ylabel, what = {"time_per_epoch": ("s_per_epoch", f"seconds per epoch ({examples} examples)", "Time per epoch"),
                       "gflops": ("gflops", "GFLOP/s", "Throughput"),
                       "speedup_batch": ("speedup", f"speedup over {BASELINE}", "Speedup")}[kind]
    return plot_vs_batch(table, y, ylabel, f"{what}, {title}", hline=1.0 if kind == "speedup_batch" else None)


def plot_gpu_speed(gpu_runs: pd.DataFrame):
    """Time per step and GFLOP/s of the GPU trainers against the batch size, one column per net."""
    net_names = sorted(gpu_runs.net.unique())
    fig, axes = plt.subplots(2, len(net_names), figsize=(5.5 * len(net_names), 8), sharex=True, squeeze=False)
    for col, net in enumerate(net_names):
        d = gpu_runs[gpu_runs.net == net]
        for row, (y, label) in enumerate((("ms_per_step", "ms per step"), ("gflops", "GFLOP/s"))):
            ax = axes[row, col]
            _impl_lines(ax, d, "batch", y)
            ax.set(xscale="log", yscale="log", ylabel=label, xlabel="batch size" if row else "",
                   title=f"Net-{net}" if row == 0 else "")
            plain_log_ticks(ax)
        axes[0, col].legend(handles=impl_legend_handles(d.impl.unique()), fontsize=9)
    fig.suptitle(f"one SGD step on {', '.join(gpu_runs.env_gpu.astype(str).unique())}")
    fig.tight_layout()
    return fig


def plot_lr_grid(grid: pd.DataFrame, chosen: float, title: str):
    """Validation accuracy of every learning rate in the grid, epoch by epoch, and at the end."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    # epoch 0 (the shared untrained network) included, so a one-epoch grid still draws lines
    sns.lineplot(data=grid, x="epoch", y="val_acc", hue="lr", palette="viridis", marker="o", ax=left,
                 legend="full", hue_norm=LogNorm(vmin=float(np.min(grid.lr)), vmax=float(np.max(grid.lr))))
    left.set(title="validation accuracy during the search", ylabel="validation accuracy")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    sns.lineplot(data=grid[grid.epoch == grid.epoch.max()], x="lr", y="val_acc", marker="o", ax=right)
    right.axvline(chosen, color="crimson", ls="--", lw=1, label=f"chosen lr = {chosen:g}")
    right.set(xscale="log", title=f"after {int(grid.epoch.max())} epoch(s)", xlabel="learning rate",
              ylabel="validation accuracy")
    lrs = sorted(grid.lr.unique())
    right.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    right.minorticks_off()  # the grid's rates only, labelled plainly above
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curves(history: pd.DataFrame, title: str, target: float | None = None):
    """Loss and accuracy (train/val/test) per epoch of one training run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    loss = history.melt(id_vars="epoch", value_vars=["train_loss", "val_loss"], var_name="split", value_name="mse")
    loss["split"] = loss.split.map({"train_loss": "train (mean minibatch loss)", "val_loss": "validation"})
    sns.lineplot(data=loss, x="epoch", y="mse", hue="split", marker="o", ax=left)
    left.set(yscale="log", title="MSE loss", ylabel="1/N Σ ||y - a||²")
    plain_log_ticks(left)
    acc_cols = [c for c in ("train_acc", "val_acc", "test_acc") if history[c].notna().any()]
    acc = history[history.epoch > 0].melt(id_vars="epoch", value_vars=acc_cols, var_name="split",
                                          value_name="accuracy")
    acc["split"] = acc.split.str.removesuffix("_acc")
    sns.lineplot(data=acc, x="epoch", y="accuracy", hue="split", marker="o", ax=right)
    if target is not None:
        right.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target:.1%}")
        right.legend()
    right.set(title="accuracy")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# -- Notebook 08: learning-rate grid search (seed 001 §5.3) -------------------------------------------
def grid_search(trainer: str, dataset, lrs, epochs: int, batch_size: int, net="1h", lr_decay: float = 0.0,
                seed: int = 0, progress: bool = False, **options) -> tuple[pd.DataFrame, float]:
    """Train one fresh network per learning rate on the training split; pick the best by validation accuracy.

    Returns (every run's history stacked with an ``lr`` column, the chosen lr), as ``parbp.seed003.grid_search``.
    Every run starts from the same weights and sees the same minibatches (same ``seed``), so the learning rate
    is the only difference. Ties go to the smaller rate, the safer choice.
    """
    runs = []
    for lr in positive_floats("lrs", lrs):
        with trainers.make(trainer, net=net, n_in=dataset.n_in, n_out=dataset.n_out, seed=seed, **options) as t:
            h = fit(t, dataset, epochs=epochs, batch_size=batch_size, lr=lr, lr_decay=lr_decay, seed=seed,
                    progress=progress, eval_train=False)
        # "lr" becomes the grid value; the rate actually used in each epoch (with decay) is "lr_epoch".
        # test_acc is dropped: the test set stays unseen until the final run.
        runs.append(h.rename(columns={"lr": "lr_epoch"}).assign(lr=lr).drop(columns="test_acc"))
    grid = pd.concat(runs, ignore_index=True)
    final = grid[grid.epoch == grid.epoch.max()]
    scores = final.val_acc.where(np.isfinite(final.train_loss), -np.inf)  # a diverged run never wins
    return grid, float(final.lr.to_numpy()[np.argmax(scores.to_numpy())])
