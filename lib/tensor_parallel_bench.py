"""The tensor-parallel goal in one run: serial, data, pipeline and tensor parallelism side by side.

    flock -x /tmp/parbp.cpu env -u OPENBLAS_CORETYPE python -m parbp.tensor_parallel_bench  # Net-2h, MNIST, batch 1000
    python -m parbp.tensor_parallel_bench --steps 3 --rounds 1 --subset 5000                  # a quick look

Every configuration trains on the same 2 MPI engines of ``parbp.ipp`` (serial in the client, on one core, while
the engines sleep), timed by ``parbp.ipp_bench.run_rounds``; the ratio to serial is taken round by round.

The CSV (``--out``, default figures/07_tensor_parallel_goal.csv) has one row per configuration: throughput, the
ratio to serial (median, min, max), CPU share (well below 1: other work took the cores, the ratio is unreliable),
the bytes each worker sends per step, tensor parallelism's step split into compute and Allreduce (the slowest
rank's, median), the goal and whether it was met, and the machine.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from . import ipp, ipp_bench
from .cli import positive_int, run
from .data import load_first
from .distributed import leading
from .nets import n_params
from .pipeline import split_layers
from .tensor_parallel import TensorParallel, message_bytes

GOAL = 1.5  # tensor parallelism, Net-2h, batch 1000, 2 ranks: throughput over serial


def measure(net="2h", dataset="mnist", subset=None, batch_size=1000, engines=2, steps=10, rounds=5,
            micro_batches=8, lr=0.1, seed=0) -> pd.DataFrame:
    """Serial, data, pipeline and tensor parallelism in interleaved rounds on the same engines: one row each."""
    ds = load_first(dataset, subset, seed)
    per_epoch = len(ds.X_train) // batch_size
    if per_epoch < steps:
        raise ValueError(f"--steps {steps} is more than the {per_epoch} minibatches of {batch_size} in the data")
    models, speed, share, _, loads = ipp_bench.run_rounds(
        ds, engines, lambda eng: _models(eng, ds, net, micro_batches, seed), batch_size, lr, steps, rounds)
    sent = _sent_bytes(models["serial"].trainer.sizes, engines, batch_size, micro_batches)
    ratios = {name: np.array(speed[name]) / np.array(speed["serial"]) for name in models}  # round by round
    df = pd.DataFrame([{"method": name, "engines": 1 if name == "serial" else engines,
                        "examples_per_s": float(np.median(speed[name])), "vs_serial": float(np.median(ratio)),
                        "vs_serial_min": float(ratio.min()), "vs_serial_max": float(ratio.max()),
                        "cpu_share": float(np.median(share[name])), "sent_mib_per_step": sent[name] / 2**20}
                       for name, ratio in ratios.items()])
    is_tp = df.method == "tensor parallel"
    tp_steps = pd.DataFrame(models["tensor parallel"].steps[-rounds * steps:])
    for column, measured in (("step_ms", "step_s"), ("compute_ms", "compute_s"), ("allreduce_ms", "comm_s")):
        df.loc[is_tp, column] = 1e3 * tp_steps[measured].median()
    df["goal"], df["met"] = "", pd.NA
    df.loc[is_tp, "goal"] = f">= {GOAL}x serial (median over rounds)"
    df.loc[is_tp, "met"] = df.loc[is_tp, "vs_serial"] >= GOAL
    return leading(df, ipp_bench.machine(net, dataset, ds, batch_size, steps, rounds, models, loads))


def _models(eng, ds, net, micro_batches, seed) -> dict:
    return {"serial": ipp.Serial(ds, net=net, seed=seed),
            "data parallel": ipp.DataParallel(eng, ds, net=net, seed=seed),
            f"pipeline 1f1b m={micro_batches}": ipp.ModelParallel(eng, ds, net=net, schedule="1f1b",
                                                                   micro_batches=micro_batches, seed=seed),
            "tensor parallel": TensorParallel(eng, ds, net=net, seed=seed)}


def _sent_bytes(sizes, engines, batch_size, micro_batches) -> dict:
    """The bytes each worker sends per step, by method: data parallel a ring all-reduce of the gradients and the
    loss, the pipeline its activations forward or deltas back across the first stage boundary."""
    width = sizes[split_layers(sizes, engines)[0][-1] + 1]
    return {"serial": 0.0, "data parallel": 2 * (engines - 1) / engines * 4 * (n_params(sizes) + 1),
            f"pipeline 1f1b m={micro_batches}": 4 * batch_size * width,
            "tensor parallel": message_bytes(sizes, batch_size)["sent_bytes"](engines)}


def report(df) -> str:
    cols = ["method", "engines", "examples_per_s", "vs_serial", "vs_serial_min", "vs_serial_max", "cpu_share",
            "sent_mib_per_step", "step_ms", "compute_ms", "allreduce_ms"]
    body = df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")
    goals = [f"  {'MET   ' if r.met else 'MISSED'} {r.method} x{r.engines}: {r.goal} (x{r.vs_serial:.2f}, "
             f"rounds {r.vs_serial_min:.2f}-{r.vs_serial_max:.2f})" for r in df[df.goal != ""].itertuples()]
    return f"{ipp_bench.report_head(df)}\n{body}\ngoal:\n" + "\n".join(goals)


def main(argv=None) -> int:
    p = ipp_bench.parser("parbp.tensor_parallel_bench", __doc__, rounds=5, out="07_tensor_parallel_goal.csv")
    p.add_argument("--micro-batches", type=positive_int, default=8, help="the pipeline's micro-batches (1F1B)")
    return ipp_bench.publish(p.parse_args(argv), measure, report)


if __name__ == "__main__":
    sys.exit(run(main, prog="parbp.tensor_parallel_bench"))
