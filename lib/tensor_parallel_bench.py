"""The tensor-parallel goal in one run: serial, data, pipeline and tensor parallelism side by side.

    flock -x /tmp/parbp.cpu env -u OPENBLAS_CORETYPE python -m parbp.tensor_parallel_bench   # Net-2h, MNIST, batch 1000, 2 engines
    python -m parbp.tensor_parallel_bench --steps 3 --rounds 1 --subset 5000                   # a quick look

Every configuration trains on the same 2 MPI engines of ``parbp.ipp`` (the serial trainer in the client, on
one core, while the engines sleep), configuration after configuration, for ``--rounds`` rounds: interleaved,
so a slow stretch of a shared machine hits all of them. A round trains ``--steps`` minibatches of each and
times them on the client, from submission to the last engine's answer. The ratio to serial is taken round
by round (each against the serial run of its own round) and reported as its median with its min and max.

The CSV (``--out``, default figures/07_tensor_parallel_goal.csv, atomically) has one row per configuration:
throughput, the ratio to serial and its spread, CPU share (CPU time over wall time per process: well below 1
means other work took the cores and the ratio is unreliable), the bytes each worker sends per step, for
tensor parallelism its step split into compute and Allreduce (the slowest rank's, median), the goal and
whether it was met, and the machine (CPU, cores, BLAS, its kernels, the load average before and after).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pandas as pd

from .results import FIGURES, write_csv

GOAL = 1.5  # tensor parallelism, Net-2h, batch 1000, 2 ranks: throughput over serial


def measure(net="2h", dataset="mnist", subset=None, batch_size=1000, engines=2, steps=10, rounds=5,
            micro_batches=8, lr=0.1, seed=0) -> pd.DataFrame:
    from . import envinfo
    from . import ipp as pipp
    from . import pipeline
    from . import tensor_parallel as tp
    from .data import load_first
    from .nets import n_params

    ds = load_first(dataset, subset, seed)
    load_before = os.getloadavg()
    with pipp.Engines(n=engines) as eng:
        models = {"serial": pipp.Serial(ds, net=net, seed=seed),
                  "data parallel": pipp.DataParallel(eng, ds, net=net, seed=seed),
                  f"pipeline 1f1b m={micro_batches}": pipp.ModelParallel(eng, ds, net=net, schedule="1f1b",
                                                                          micro_batches=micro_batches, seed=seed),
                  "tensor parallel": tp.TensorParallel(eng, ds, net=net, seed=seed)}
        per_epoch = len(ds.X_train) // batch_size
        if per_epoch < steps:
            raise ValueError(f"--steps {steps} is more than the {per_epoch} minibatches of {batch_size} in the data")
        speed = {k: [] for k in models}
        share = {k: [] for k in models}
        for r in range(rounds + 1):  # round 0 warms every configuration up and is not counted
            first = (r * steps) % (per_epoch - steps + 1)
            for name, model in models.items():
                t0 = time.perf_counter()
                out = model.run_steps(0, batch_size, lr, first=first, count=steps)
                dt = time.perf_counter() - t0
                if r:
                    speed[name].append(out["steps"] * batch_size / dt)
                    share[name].append(out["cpu_share"])
        load_after = os.getloadavg()
        tp_steps = pd.DataFrame(models["tensor parallel"].steps[-rounds * steps:])
        sizes = models["serial"].trainer.sizes
        width = sizes[pipeline.split_layers(sizes, engines)[0][-1] + 1]  # the first stage boundary
    sent = {"serial": 0.0,
            "data parallel": 2 * (engines - 1) / engines * 4 * (n_params(sizes) + 1),  # ring all-reduce of the gradients + loss
            f"pipeline 1f1b m={micro_batches}": 4 * batch_size * width,  # activations forward or deltas back, per boundary
            "tensor parallel": tp.message_bytes(sizes, batch_size)["sent_bytes"](engines)}
    serial = np.array(speed["serial"])
    rows = []
    for name in models:
        ratio = np.array(speed[name]) / serial
        rows.append({"method": name, "engines": 1 if name == "serial" else engines,
                     "examples_per_s": float(np.median(speed[name])), "vs_serial": float(np.median(ratio)),
                     "vs_serial_min": float(ratio.min()), "vs_serial_max": float(ratio.max()),
                     "cpu_share": float(np.median(share[name])), "sent_mib_per_step": sent[name] / 2**20})
    df = pd.DataFrame(rows)
    is_tp = df.method == "tensor parallel"
    df.loc[is_tp, "step_ms"] = 1e3 * tp_steps.step_s.median()
    df.loc[is_tp, "compute_ms"] = 1e3 * tp_steps.compute_s.median()
    df.loc[is_tp, "allreduce_ms"] = 1e3 * tp_steps.comm_s.median()
    df["goal"], df["met"] = "", pd.NA
    df.loc[is_tp, "goal"] = f">= {GOAL}x serial (median over rounds)"
    df.loc[is_tp, "met"] = df.loc[is_tp, "vs_serial"] >= GOAL
    env = envinfo.summary()
    meta = {"net": net if isinstance(net, str) else "-".join(map(str, net)), "dataset": dataset,
            "train_examples": len(ds.X_train), "batch_size": batch_size, "steps_per_round": steps, "rounds": rounds,
            "cpu": env["cpu"], "cores": env["cores_logical"], "blas": env["blas"],
            "openblas_coretype": env["openblas_coretype"], "impl": models["serial"].impl,
            "loadavg_before": round(load_before[0], 2), "loadavg_after": round(load_after[0], 2)}
    for i, (k, v) in enumerate(meta.items()):
        df.insert(i, k, v)
    return df


def report(df) -> str:
    r0 = df.iloc[0]
    head = (f"Net-{r0.net}, {r0.dataset} ({r0.train_examples} examples), batch {r0.batch_size}, {r0.rounds} rounds x "
            f"{r0.steps_per_round} steps | {r0.cpu}, {r0.cores} cores | {r0.blas} | OPENBLAS_CORETYPE={r0.openblas_coretype} | "
            f"load {r0.loadavg_before} -> {r0.loadavg_after}")
    cols = ["method", "engines", "examples_per_s", "vs_serial", "vs_serial_min", "vs_serial_max", "cpu_share",
            "sent_mib_per_step", "step_ms", "compute_ms", "allreduce_ms"]
    body = df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")
    goals = [f"  {'MET   ' if r.met else 'MISSED'} {r.method} x{r.engines}: {r.goal} (x{r.vs_serial:.2f}, "
             f"rounds {r.vs_serial_min:.2f}-{r.vs_serial_max:.2f})" for r in df[df.goal != ""].itertuples()]
    return f"{head}\n{body}\ngoal:\n" + "\n".join(goals)


def main(argv=None) -> int:
    from .cli import Parser, net, positive_int
    from .data import NAMES, TOY

    p = Parser(prog="python -m parbp.tensor_parallel_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="2h", type=net, help='"1h", "2h" or hidden widths like 64,32')
    p.add_argument("--dataset", default="mnist", choices=(*NAMES, TOY))
    p.add_argument("--subset", type=positive_int, default=None, help="first N training examples (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=1000)
    p.add_argument("--engines", type=positive_int, default=2)
    p.add_argument("--steps", type=positive_int, default=10, help="minibatches per configuration and round")
    p.add_argument("--rounds", type=positive_int, default=5)
    p.add_argument("--micro-batches", type=positive_int, default=8, help="the pipeline's micro-batches (1F1B)")
    p.add_argument("--out", default=str(FIGURES / "07_tensor_parallel_goal.csv"))
    args = p.parse_args(argv)
    df = measure(net=args.net, dataset=args.dataset, subset=args.subset, batch_size=args.batch_size,
                 engines=args.engines, steps=args.steps, rounds=args.rounds, micro_batches=args.micro_batches)
    path = write_csv(df, args.out)
    print(report(df))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main, prog="parbp.tensor_parallel_bench"))
