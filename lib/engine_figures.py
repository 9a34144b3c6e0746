"""Notebook 07's figures: the pipeline's bubble and activation memory against the micro-batches, and the
modelled efficiency of each scheme against the number of workers."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .results import plain_log_ticks


def bubble(bubbles, engines, minibatch):
    """Idle fraction per number of micro-batches: measured, predicted from the measured stage times, equal stages."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (schedule, g), color in zip(bubbles.groupby("schedule"), ("C0", "C1")):
        mean = g.groupby("micro_batches").mean(numeric_only=True)
        ax.plot(mean.index, mean.idle_measured, "o-", color=color, label=f"{schedule}: measured")
        ax.plot(mean.index, mean.idle_predicted, "s--", color=color, alpha=0.6,
                label=f"{schedule}: predicted from measured stage times")
    m = np.array(sorted(bubbles.micro_batches.unique()))
    ax.plot(m, (engines - 1) / (m + engines - 1), "k:", label="equal stages (p-1)/(m+p-1)")
    ax.set(xscale="log", ylim=(0, 1), xlabel="micro-batches m", ylabel="idle fraction",
           title=f"pipeline bubble, {engines} stages, minibatch {minibatch}")
    plain_log_ticks(ax, xticks=m)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def activation_memory(memory, minibatch):
    """Peak activation memory per stage and schedule, against the number of micro-batches."""
    fig, ax = plt.subplots(figsize=(7, 4))
    kept = memory.assign(**{"schedule, stage": memory.schedule + ", stage " + memory.stage.astype(str)})
    sns.barplot(data=kept, x="micro_batches", y="MiB_measured", hue="schedule, stage", ax=ax)
    ax.set(ylabel="activations kept (MiB, measured = formula)", xlabel="micro-batches m",
           title=f"peak activation memory per stage, minibatch {minibatch}")
    ax.legend(title="schedule, stage", fontsize=8, loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    fig.tight_layout()
    return fig


def projection(proj, net):
    """Modelled efficiency T(1) / (p·T(p)) against the workers, per scheme and link."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(data=proj, x="workers", y="efficiency", hue="scheme", style="link", marker=".", ax=ax)
    ax.set(xscale="log", ylim=(0, 1.05), title=f"Net-{net}, global batch 1000: efficiency T(1) / (p·T(p)), model")
    plain_log_ticks(ax, xticks=sorted(proj.workers.unique())[::2])
    ax.legend(fontsize=7, handlelength=4)
    fig.tight_layout()
    return fig
