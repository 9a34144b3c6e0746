"""Benchmark: synchronous data parallelism (``parbp.mpi`` allreduce) against 1 rank and PyTorch DDP.

    python -m parbp.mpi_bench --net 1h --batch-size 1000 --steps 30 --out figures/06_allreduce_bench.csv

One run measures, on the same job (same net, MSE loss, sigmoid, plain SGD, one global minibatch of
``--batch-size`` examples per step, 1 BLAS/intra-op thread per process), each under mpiexec:
  * parbp.mpi allreduce with 1 rank and with ``--processes`` ranks, and
  * torch DistributedDataParallel over gloo on loopback with as many (and 1 process without DDP).
Reported per configuration: the median step time, its forward+backward part (``compute_s``) and the rest
(``other_s``: packing, the Allreduce, waiting for the slower rank, the update); the parallel efficiency
E = T_1 / (p · T_p); and parbp's step time relative to DDP's.

Data are random: the step time of a dense MLP does not depend on the values. Every step is timed between
two barriers, so the median is the step time of the slowest rank.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import numpy as np
import pandas as pd

from . import trainers
from .data import random_batch
from .distributed import PackedGradients, allreduce_step, flags, run_job


# ---- Both engines under mpiexec: this module re-runs itself with --worker parbp|torch ----------------------


def mpi_worker(args) -> None:
    """One rank of a measurement; rank 0 writes the medians to ``args.out``."""
    from mpi4py import MPI
    from threadpoolctl import threadpool_limits

    comm = MPI.COMM_WORLD
    rows = np.array_split(np.arange(args.batch_size), comm.size)[comm.rank]  # this rank's slice of the minibatch
    X, Y = random_batch(784, 10, len(rows), seed=comm.rank)
    with threadpool_limits(1):
        row = (_torch_steps if args.worker == "torch" else _parbp_steps)(args, comm, X, Y)
    if comm.rank == 0:
        from .results import write_csv

        write_csv(pd.DataFrame([row]), args.out)


def _parbp_steps(args, comm, X, Y) -> dict:
    from .mpi import Watchdog

    trainer = trainers.get(args.impl)(net=args.net, n_in=784, n_out=10, seed=0)
    packed, dog = PackedGradients(trainer), Watchdog(comm, 60.0)
    step, compute = [], []
    for i in range(args.warmup + args.steps):
        comm.Barrier()
        t0 = time.perf_counter()
        trainer.gradients(X, Y)  # the compute part alone, timed separately below
        t1 = time.perf_counter()
        comm.Barrier()
        t2 = time.perf_counter()
        allreduce_step(trainer, packed, X, Y, args.batch_size, 1e-3, comm, dog)
        comm.Barrier()
        t3 = time.perf_counter()
        if i >= args.warmup:
            compute.append(t1 - t0)
            step.append(t3 - t2)
    compute = comm.gather(compute, root=0)
    if comm.rank:
        return None
    # between barriers, so every rank saw the same interval: take rank 0's; compute: the slowest rank
    step_s, compute_s = float(np.median(step)), float(np.median(np.max(compute, axis=0)))
    return {"step_s": step_s, "compute_s": compute_s, "other_s": max(step_s - compute_s, 0.0)}


def _torch_steps(args, comm, X, Y) -> dict:
    import torch
    import torch.distributed as dist

    torch.set_num_interop_threads(1)
    # parbp's torch trainer: the same network and initial weights as parbp's trainers, on one thread
    model = trainers.get("torch")(net=args.net, n_in=784, n_out=10, seed=0).model
    if comm.size > 1:
        port = comm.bcast(_free_port() if comm.rank == 0 else None)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size)
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    X, Y = torch.from_numpy(X), torch.from_numpy(Y)
    times = []
    for i in range(args.warmup + args.steps):
        comm.Barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        # the study's loss, 1/B Σ ||y - a||² over this rank's rows: DDP averages the gradients over the ranks
        # (all-reducing buckets during the backward pass), which makes it the global batch's, as in parbp
        ((model(X) - Y) ** 2).sum(dim=1).mean().backward()
        opt.step()
        comm.Barrier()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if comm.size > 1:
        dist.destroy_process_group()
    return {"step_s": float(np.median(times))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measured(worker: str, processes: int, timeout: float, **options) -> dict:
    """One engine's medians, measured under ``mpiexec -n processes``."""
    row = run_job("parbp.mpi_bench", processes, ["--worker", worker, *flags(options)], timeout).iloc[0]
    return {k: float(v) for k, v in row.items()}


def run_parbp(net="1h", batch_size=1000, processes=2, steps=30, warmup=5, impl=None, timeout=300) -> dict:
    """Median step time (and its compute/communication split) of parbp.mpi allreduce under mpiexec."""
    return _measured("parbp", processes, timeout, net=net, batch_size=batch_size, steps=steps, warmup=warmup, impl=impl)


def run_ddp(net="1h", batch_size=1000, processes=2, steps=30, warmup=5, timeout=300) -> dict:
    """Median step time of torch (DistributedDataParallel over gloo on loopback when processes > 1)."""
    return _measured("torch", processes, timeout, net=net, batch_size=batch_size, steps=steps, warmup=warmup)


# ---- Both, side by side ---------------------------------------------------------------------------------


def bench(net="1h", batch_size=1000, processes=2, steps=30, warmup=5, impl=None, timeout=300, out=None):
    """Both engines, 1 and ``processes`` processes, measured now; one row per configuration."""
    from .envinfo import cpu_name

    impl = impl or trainers.fastest_cpu(threaded=False)
    p, kw = processes, dict(net=net, batch_size=batch_size, steps=steps, warmup=warmup, timeout=timeout)
    one, many = run_parbp(processes=1, impl=impl, **kw), run_parbp(processes=p, impl=impl, **kw)
    t1, t2 = run_ddp(processes=1, **kw), run_ddp(processes=p, **kw)
    # efficiency against the same engine on one process (DDP's: torch without DDP)
    runs = [("parbp.mpi allreduce", 1, one, one), ("parbp.mpi allreduce", p, many, one), ("torch (no DDP)", 1, t1, t1),
            ("torch DDP gloo", p, t2, t1)]
    df = pd.DataFrame([{"net": net, "batch_size": batch_size, "engine": engine, "processes": n, **r,
                        "efficiency": base["step_s"] / (n * r["step_s"])} for engine, n, r, base in runs])
    df["vs_ddp"] = df.step_s / t2["step_s"]
    df["parbp_impl"], df["cpu"], df["cores"] = impl, cpu_name(), os.cpu_count()
    if out:
        from .results import write_csv

        write_csv(df, out)
    return df


def main(argv=None):
    from .cli import Parser, nonnegative_int, positive_float, positive_int

    p = Parser(prog="python -m parbp.mpi_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="1h", choices=("1h", "2h"))
    p.add_argument("--batch-size", type=positive_int, default=1000)
    p.add_argument("--processes", type=positive_int, default=2)
    p.add_argument("--steps", type=positive_int, default=30)
    p.add_argument("--warmup", type=nonnegative_int, default=5)
    p.add_argument("--impl", default=None, choices=trainers.names(),
                   help="per-rank parbp trainer (default serial-blas if available)")
    p.add_argument("--timeout", type=positive_float, default=300)
    p.add_argument("--out", default=None, help="CSV of the results (written atomically)")
    p.add_argument("--worker", choices=("parbp", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch_size < args.processes:
        p.error(f"--batch-size {args.batch_size} must be >= --processes {args.processes}")
    if args.impl is not None and trainers.why_unavailable(args.impl):
        p.error(f"--impl {args.impl!r} cannot run here: {trainers.why_unavailable(args.impl)}")
    if args.worker:
        args.impl = args.impl or trainers.fastest_cpu(threaded=False)
        mpi_worker(args)
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(bench(args.net, args.batch_size, args.processes, args.steps, args.warmup, args.impl,
                    args.timeout, args.out).drop(columns=["cpu"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    from .cli import run as _run

    sys.exit(_run(main, prog="python -m parbp.mpi_bench"))
