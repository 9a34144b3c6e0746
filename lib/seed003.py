"""Seed 003's experiment at its scale, and its two published tables beside ours.

Seed 003 (an mpi4py class project) trained a sigmoid MLP on all of MNIST's 50,000 training images with minibatch
SGD (batch 100, 5 epochs, learning rate 1.0 shrinking 1 % per epoch), serially, with a synchronous method
(parameter averaging) and an asynchronous one (a shared copy updated "in turn"), on 2 to 4 processes of an
Intel i7-8700 (16 GB). Here the same runs go through ``parbp.mpi``; the rate is chosen again by a grid search
on the validation split, because this study's MSE is scaled differently from theirs (1.0 saturates here).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from . import checkpoint, mpi, trainers
from .train import evaluate

SETTING = dict(dataset="mnist", batch_size=100, epochs=5, lr_decay=0.01)
SEED_LR = 1.0

# Seed 003, slide "Experiment & evaluation": loss, accuracy and time after 5 epochs
SEED_RESULTS = pd.DataFrame(
    [("serial", 1, 0.3726, 0.8880, 9.0821),
     ("sync", 2, 0.2709, 0.9210, 10.8651), ("sync", 3, 0.2744, 0.9213, 9.5284), ("sync", 4, 0.2977, 0.9185, 9.7092),
     ("async", 2, 0.3204, 0.9111, 7.5638), ("async", 3, 0.6277, 0.8426, 6.4041), ("async", 4, 0.4981, 0.8596, 5.9964)],
    columns=["method", "processes", "loss", "accuracy", "time_s"])
# ... and the next slide: CPU usage (a range, % of the machine) and memory usage (% of 16 GB)
SEED_USAGE = pd.DataFrame(
    [("serial", 1, 35, 40, 12.0), ("sync", 2, 40, 45, 28.7), ("sync", 3, 55, 57, 36.5), ("sync", 4, 65, 70, 43.3),
     ("async", 2, 52, 55, 28.0), ("async", 3, 70, 75, 35.0), ("async", 4, 80, 85, 42.9)],
    columns=["method", "processes", "cpu_percent_low", "cpu_percent_high", "memory_percent"])


def test_scores(params_file, ds, net, impl=None, loss="mse") -> tuple[float, float]:
    """(MSE, accuracy) on the test split of the parameters a ``parbp.mpi`` run saved with --params-out
    (the MSE of the softmax outputs where the run trained with ``loss="xent"``)."""
    params, _ = checkpoint.load_params(params_file)
    trainer = trainers.make(impl or trainers.fastest_cpu(threaded=False), net=net, n_in=ds.n_in, n_out=ds.n_out,
                            seed=0, **mpi.loss_option(loss))
    trainer.params = [(W.astype(trainer.dtype), b.astype(trainer.dtype)) for W, b in params]
    return evaluate(trainer, ds.X_test, ds.Y_test, ds.y_test)


def run(mode: str, processes: int, lr: float, ds, net: str = "1h", subset=None, epochs=SETTING["epochs"],
        impl=None, seed: int = 0, **options) -> pd.DataFrame:
    """One ``parbp.mpi`` job in seed 003's setting; every row gets the test loss and accuracy of its final model."""
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.npz"
        df = mpi.run(mode, processes, timeout=3600, watchdog=300, net=net, subset=subset, epochs=epochs, lr=lr,
                     impl=impl, seed=seed, params_out=params,
                     **{**{k: v for k, v in SETTING.items() if k != "epochs"}, **options})
        test_loss, test_acc = test_scores(params, ds, net, impl, options.get("loss", "mse"))
    # their methods in parbp.mpi's terms: "sync" is parameter averaging after every step (their v = 1/c sum w_i);
    # parbp's gradient all-reduce is the serial algorithm spread out and has no row of theirs
    method = "serial" if processes == 1 else {"average": "sync", "async": "async", "allreduce": "allreduce"}[mode]
    return df.assign(lr0=lr, method=method, test_loss=test_loss, test_acc=test_acc)


def grid_search(lrs, ds, **kwargs) -> tuple[pd.DataFrame, float]:
    """Serial runs (one process) at every rate; the best is the one with the highest final validation accuracy."""
    if not lrs:
        raise ValueError("lrs must name at least one learning rate")
    runs = pd.concat([run("allreduce", 1, lr, ds, **kwargs) for lr in lrs], ignore_index=True)
    last = runs[runs["rank"] == 0].sort_values("epoch").groupby("lr0").tail(1)
    return runs, float(last.sort_values(["val_acc", "lr0"], ascending=[False, True]).lr0.iloc[0])


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, processes): final validation and test numbers and the training time (summed epochs)."""
    last = runs[runs["rank"] == 0].sort_values("epoch").groupby(["method", "mode", "processes"]).tail(1)
    return (last[["method", "mode", "processes", "lr0", "val_loss", "val_acc", "test_loss", "test_acc", "elapsed_s"]]
            .rename(columns={"lr0": "lr", "elapsed_s": "time_s"}).reset_index(drop=True))


def repeat_times(table: pd.DataFrame, rounds: int, lr: float, ds, sync_every: int = 1, **common) -> pd.DataFrame:
    """Whole-training seconds of seed 003's timed methods: ``table``'s run of each (``results_table``; round 0)
    and ``rounds`` - 1 more runs of each, in the same order every round, so a slow stretch of a shared machine
    hits every configuration alike. Columns: method, mode, processes, round, time_s."""
    rows = []
    for k in range(rounds):
        for r in table[table.method.isin(("serial", "sync", "async"))].itertuples():  # the methods seed 003 times
            options = {} if r.processes == 1 else dict(sync_every=sync_every)
            time_s = (results_table(run(r.mode, int(r.processes), lr, ds, **options, **common)).time_s.iloc[0]
                      if k else r.time_s)  # round 0 is the table's own run
            rows.append(dict(method=r.method, mode=r.mode, processes=r.processes, round=k, time_s=time_s))
    return pd.DataFrame(rows)


def usage_table(runs: pd.DataFrame, cores: int, memory_gib: float) -> pd.DataFrame:
    """CPU and memory as seed 003 reports them: % of the whole machine (all cores; all memory) for the job."""
    per_rank = (runs.groupby(["method", "mode", "processes", "rank"])
                .agg(cpu_percent=("cpu_percent", "mean"), peak_rss_mib=("peak_rss_mib", "max")).reset_index())
    job = per_rank.groupby(["method", "mode", "processes"]).agg(
        cpu_percent_per_rank=("cpu_percent", "mean"), cpu_percent_sum=("cpu_percent", "sum"),
        peak_rss_mib_sum=("peak_rss_mib", "sum")).reset_index()
    return job.assign(cpu_percent_of_machine=job.cpu_percent_sum / cores,
                      memory_percent_of_machine=100 * job.peak_rss_mib_sum / (memory_gib * 1024))


def side_by_side(ours: pd.DataFrame, seed: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Seed 003's rows with ours beside them (ours_*), then our rows the seed has no counterpart for."""
    merged = seed.merge(ours, on=["method", "processes"], how="outer", suffixes=("_seed", "_ours"))
    merged["_order"] = merged.method.map({"serial": 0, "sync": 1, "async": 2, "allreduce": 3})
    merged = merged.sort_values(["_order", "processes"]).drop(columns="_order")
    return merged[["method", "processes", *[c for c in columns if c in merged]]].reset_index(drop=True)


def plot_curves(per_epoch: pd.DataFrame, title: str):
    """Validation accuracy (what seed 003 compares) and training loss per epoch, a line per method and process
    count; serial dashed and drawn on top, since allreduce is the serial algorithm and would hide it."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    order = ["serial", "allreduce", "sync", "async"]
    colors = {m: f"C{i}" for i, m in enumerate(order)}
    runs = sorted(per_epoch.sort_values("epoch").groupby(["method", "processes"]),
                  key=lambda run: (order.index(run[0][0]) if run[0][0] in order else len(order), run[0][1]))
    markers = {1: "o", 2: "s", 3: "^", 4: "D"}
    for ax, (column, what) in zip(axes, {"val_acc": "validation accuracy",
                                         "train_loss": "mean minibatch loss (MSE)"}.items()):
        for (method, processes), run in runs:
            serial = method == "serial"
            ax.plot(run.epoch, run[column], ls="--" if serial else "-", lw=2.2 if serial else 1.4,
                    color="black" if serial else colors.get(method), marker=markers.get(processes, "x"), ms=5,
                    zorder=3 if serial else 2, label=f"{method}, {processes} process{'es' if processes > 1 else ''}")
        ax.set(xlabel="epoch", ylabel=what, title=what)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
