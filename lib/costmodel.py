"""An alpha-beta cost model of data-parallel SGD, fitted to messages measured on this machine.

A message of n bytes takes  t(n) = α + β·n  (α: latency, β: seconds per byte = 1/bandwidth).
With N parameters of 4 bytes and p workers, one synchronous step costs compute plus communication:

  ring all-reduce     T_comm = 2(p-1)·α + 2·(p-1)/p · 4N·β      (reduce-scatter + all-gather; the bytes a
                                                                 worker sends stay ~8N however large p is)
  parameter server    T_comm = 2p·(α + 4N·β)                     (one server receives p gradients and sends
                                                                 p parameter copies through its one link)
  compute             T_comp(b) = b·t_example + t_update          (b examples on each worker, measured here)

Step time is T_comp + T_comm (no overlap), and the parallel efficiency is E(p) = T(1) / (p·T(p)) for a
fixed global batch (strong scaling) or T_comp / T(p) for a fixed batch per worker (weak scaling).

Model parallelism as a pipeline (``pipeline_step``; GPipe and 1F1B have the same span): p stages, the
minibatch of B examples in m micro-batches, every boundary carrying a micro-batch's activations
(B/m × width floats) forward and its deltas back:

  pipeline            T = (m + p − 1)·(k·T_comp(B)/(p·m) + 2(α + 4·width·B/m·β)) + t_update/p
                      (k: the slowest stage over the mean, 1 for equal stages; the messages of one
                      micro-batch are on the critical path, none overlap)

    mpiexec -n 2 python -m parbp.costmodel --out messages.csv   # ping-pong and Allreduce, several sizes
    df = measure_messages()                                    # the same from Python (runs mpiexec)
    model = fit(df[df.op == "pingpong"])                       # AlphaBeta(alpha, beta)
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

SIZES = tuple(2 ** k for k in range(3, 25, 3))  # 8 B .. 16 MiB: latency- to bandwidth-bound
# How MPICH moves bytes between two ranks of one machine: its shared memory (the default), or TCP over
# loopback, the way a message between machines would go (no shared memory, UCX restricted to TCP)
TRANSPORTS = {"shm": {}, "tcp": {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"}}


@dataclass(frozen=True)
class AlphaBeta:
    alpha: float  # seconds per message
    beta: float   # seconds per byte

    def time(self, nbytes):
        return self.alpha + self.beta * np.asarray(nbytes, dtype=float)

    @property
    def bandwidth_gbs(self) -> float:
        return 1e-9 / self.beta


def fit(df: pd.DataFrame) -> AlphaBeta:
    """Least squares of t = α + β·n on *relative* errors (times span 4 orders of magnitude; a plain fit
    would ignore the small messages that determine α). One-way times: ``df`` has ``bytes``, ``seconds``."""
    n, t = df["bytes"].to_numpy(float), df["seconds"].to_numpy(float)
    A = np.stack([np.ones_like(n), n], axis=1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if beta <= 0:
        raise ValueError("the fitted bandwidth is not positive: the measurements are too noisy to fit; measure again")
    return AlphaBeta(max(float(alpha), 0.0), float(beta))


def ring_allreduce(model: AlphaBeta, nbytes, p):
    """Reduce-scatter + all-gather around a ring of p ranks (the module docstring's formula); 0 for one rank."""
    p = np.asarray(p, dtype=float)
    return np.where(p > 1, 2 * (p - 1) * model.alpha + 2 * (p - 1) / p * nbytes * model.beta, 0.0)


def mpich_allreduce(model: AlphaBeta, nbytes, p):
    """MPICH's Allreduce of a long message (Rabenseifner: a recursive-halving reduce-scatter, then a
    recursive-doubling all-gather), 2·log₂p'·α + 2·(p'−1)/p'·n·β over p' = the largest power of two ≤ p. The
    p − p' ranks left over first hand their whole vector to a partner and get the sum back at the end: two
    more whole messages on the critical path, so 3 ranks take longer than 4. A ring for p = 2 and 4."""
    p = np.asarray(p, dtype=float)
    pof2 = 2.0 ** np.floor(np.log2(np.maximum(p, 1.0)))
    core = 2 * np.log2(pof2) * model.alpha + 2 * (pof2 - 1) / pof2 * nbytes * model.beta
    extra = np.where(p > pof2, 2 * (model.alpha + nbytes * model.beta), 0.0)
    return np.where(p > 1, core + extra, 0.0)


def parameter_server(model: AlphaBeta, nbytes, p):
    """One server takes p gradients and sends p parameter copies through its one link; 0 for one rank."""
    p = np.asarray(p, dtype=float)
    return np.where(p > 1, 2 * p * (model.alpha + nbytes * model.beta), 0.0)


COMM = {"ring all-reduce": ring_allreduce, "parameter server": parameter_server}

# A published datacenter interconnect, for projections past one machine (200 Gb/s = 25 GB/s). The adapter's
# latency is a lower bound on MPI's α: the software adds a few hundred ns more.
INFINIBAND_HDR = AlphaBeta(alpha=0.6e-6, beta=1 / 25e9)
INFINIBAND_HDR_SOURCE = ("InfiniBand HDR, NVIDIA ConnectX-6: 200 Gb/s per port, sub-600 ns latency "
                         "(docs.nvidia.com/networking/display/ConnectX6EN/Introduction)")


@dataclass(frozen=True)
class Compute:
    t_example: float  # seconds of forward + backward per example
    t_update: float   # seconds per step that do not scale with the batch (the update)

    def time(self, b):
        return np.asarray(b, dtype=float) * self.t_example + self.t_update


def measure_compute(net: str, batch_size: int = 1000, impl: str = "serial-blas", repeat: int = 5,
                    n_in: int = 784, n_out: int = 10) -> Compute:
    """Time forward+backward and the update of one worker (1 BLAS thread) on this machine; medians."""
    from threadpoolctl import threadpool_limits

    from . import trainers
    from .data import random_batch

    X, Y = random_batch(n_in, n_out, batch_size, 0)
    with threadpool_limits(1), trainers.get(impl)(net=net, n_in=n_in, n_out=n_out) as t:
        grad, upd = [], []
        for _ in range(repeat + 1):  # the first call warms caches (and compiles, for numba trainers)
            t0 = time.perf_counter()
            _, g = t.gradients(X, Y)
            t1 = time.perf_counter()
            t.apply_gradients(g, 1e-6)
            grad.append(t1 - t0)
            upd.append(time.perf_counter() - t1)
    return Compute(float(np.median(grad[1:])) / batch_size, float(np.median(upd[1:])))


def project(model: AlphaBeta, compute: Compute, n_params: int, workers, batch_size: int = 1000,
            scaling: str = "strong") -> pd.DataFrame:
    """Step time and efficiency for each scheme and worker count. Strong scaling splits ``batch_size``
    over the workers (so p is capped at the batch size); weak scaling gives each worker ``batch_size``."""
    if scaling not in ("strong", "weak"):
        raise ValueError(f"scaling must be 'strong' or 'weak', got {scaling!r}")
    workers = np.asarray([p for p in workers if scaling == "weak" or p <= batch_size])
    t_comp = compute.time(batch_size / workers if scaling == "strong" else batch_size)
    frames = []
    for scheme, comm in COMM.items():
        t_comm = comm(model, 4 * n_params, workers)
        step = t_comp + t_comm
        eff = compute.time(batch_size) / (workers * step) if scaling == "strong" else t_comp / step
        frames.append(pd.DataFrame({"scheme": scheme, "scaling": scaling, "workers": workers, "batch_size": batch_size,
                                    "compute_s": t_comp, "comm_s": t_comm, "step_s": step, "efficiency": eff}))
    return pd.concat(frames, ignore_index=True)


def pipeline_step(model: AlphaBeta, compute: Compute, stages, micro_batches, batch_size: int, width: int,
                  imbalance: float = 1.0):
    """Step time of a p-stage pipeline (the formula in the module docstring); arrays broadcast."""
    p, m = np.asarray(stages, dtype=float), np.asarray(micro_batches, dtype=float)
    work = compute.t_example * batch_size * np.where(p > 1, imbalance, 1.0) / (p * m)
    message = np.where(p > 1, 2 * (model.alpha + 4 * width * batch_size / m * model.beta), 0.0)
    return (m + p - 1) * (work + message) + compute.t_update / p


def project_parallelism(model: AlphaBeta, compute: Compute, n_params: int, width: int, workers,
                        batch_size: int = 1000, micro_per_stage: int = 4, imbalance: float = 1.0) -> pd.DataFrame:
    """Data parallelism (ring all-reduce of 4N bytes) against a pipeline of as many stages as workers, for a
    fixed global batch (strong scaling). The pipeline gets m = ``micro_per_stage``·p micro-batches (GPipe's
    rule of thumb m ≥ 4p), at most one example each; its stages are the same work cut in p (``imbalance``:
    the slowest stage over the mean), boundaries ``width`` activations wide."""
    workers = np.asarray([p for p in workers if p <= batch_size])
    m = np.minimum(micro_per_stage * workers, batch_size)
    dp_comm = ring_allreduce(model, 4 * n_params, workers)
    pp = pipeline_step(model, compute, workers, m, batch_size, width, imbalance)
    pp_comm = pp - pipeline_step(AlphaBeta(0.0, 0.0), compute, workers, m, batch_size, width, imbalance)
    schemes = {"data parallel (ring all-reduce)": (compute.time(batch_size / workers) + dp_comm, dp_comm, 1),
               "model parallel (pipeline)": (pp, pp_comm, m)}
    return pd.concat([pd.DataFrame({"scheme": scheme, "workers": workers, "micro_batches": micro,
                                    "batch_size": batch_size, "step_s": step, "comm_s": comm,
                                    "efficiency": compute.time(batch_size) / (workers * step)})
                      for scheme, (step, comm, micro) in schemes.items()], ignore_index=True)


# ---- Measuring messages (runs under mpiexec) -------------------------------------------------------------


def _measure(sizes, budget: float):
    """Median one-way ping-pong time and Allreduce time per size, between ranks 0 and 1."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rows = []
    for n in sizes:
        buf = np.zeros(max(n // 4, 1), dtype=np.float32)
        reps = int(np.clip(budget / (1e-4 + n * 1e-9), 5, 200))  # ~``budget`` seconds per size
        for op in ("pingpong", "allreduce"):
            times = []
            for _ in range(reps + 2):
                comm.Barrier()
                t0 = time.perf_counter()
                if op == "allreduce":
                    comm.Allreduce(MPI.IN_PLACE, buf)
                elif comm.rank < 2:  # rank 0 sends and waits for the echo, rank 1 echoes
                    for move in ((comm.Send, comm.Recv) if comm.rank == 0 else (comm.Recv, comm.Send)):
                        move(buf, 1 - comm.rank)
                times.append((time.perf_counter() - t0) / (2 if op == "pingpong" else 1))  # one way
            times = comm.bcast(times, root=0)  # rank 0's clock defines every result
            rows.append({"op": op, "bytes": buf.nbytes, "seconds": float(np.median(times[2:])),
                         "processes": comm.size, "reps": reps})
    return rows if comm.rank == 0 else None


def measure_messages(processes: int = 2, transport: str = "shm", sizes=SIZES, budget: float = 0.05,
                     timeout: float = 120) -> pd.DataFrame:
    """Run the measurement under mpiexec and return its rows; ``transport``: "shm" or "tcp" (``TRANSPORTS``)."""
    from .distributed import run_job

    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; choose one of {list(TRANSPORTS)}")
    if processes < 2:
        raise ValueError("a ping-pong needs at least 2 processes")
    df = run_job("parbp.costmodel", processes, ["--budget", str(budget), "--sizes", *map(str, sizes)], timeout,
                 env=TRANSPORTS[transport])
    df.insert(0, "transport", transport)
    return df


def main(argv=None):
    from .cli import Parser, positive_float, positive_int

    p = Parser(prog="mpiexec -n 2 python -m parbp.costmodel",
               description="Measure MPI ping-pong and Allreduce times for the alpha-beta model.")
    p.add_argument("--out", required=True, help="CSV written by rank 0 (atomically)")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=list(SIZES), help="message sizes in bytes")
    p.add_argument("--budget", type=positive_float, default=0.05, help="about this many seconds per size and operation")
    args = p.parse_args(argv)
    if any(s < 4 for s in args.sizes):
        p.error("every size must be at least 4 bytes (one float32)")
    from mpi4py import MPI

    if MPI.COMM_WORLD.size < 2:
        p.error("run under mpiexec with at least 2 processes")
    rows = _measure(args.sizes, args.budget)
    if rows is not None:
        from .results import write_csv

        write_csv(pd.DataFrame(rows), args.out)
    return 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main, prog="parbp.costmodel"))
