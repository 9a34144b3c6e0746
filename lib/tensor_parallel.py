"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): every layer's neurons split across the ranks.

    mpiexec -n 2 python -m parbp.tensor_parallel --net 2h --dataset mnist --batch-size 1000 --steps 20

The weight layers are taken in pairs, (0, 1), (2, 3), ... In a pair W_a (n × h) then W_b (h × k), rank r
owns a slice c_r of the h hidden units: the columns W_a[:, c_r] with b_a[c_r], and the rows W_b[c_r, :].

  forward   H_r = σ(X W_a[:, c_r] + b_a[c_r])         no communication: X is whole on every rank
            Z   = Σ_r H_r W_b[c_r, :]                 ONE Allreduce of the B × k partial products
            A   = σ(Z + b_b)                          whole and identical on every rank
  backward  Δ_b whole on every rank (from the layer above, which is whole too)
            ∂W_b[c_r] = H_rᵀ Δ_b,  Δ_a,r = (Δ_b W_b[c_r]ᵀ)∘σ'(H_r),  ∂W_a[:, c_r] = Xᵀ Δ_a,r
            dL/dX = Σ_r Δ_a,r W_a[:, c_r]ᵀ                ONE Allreduce of the B × n partial products

so a pair moves its output's activations forward and its input's gradient backward: no weights, no weight
gradients (and the first pair, whose input is the data, skips its backward Allreduce). b_b and all after the
Allreduce are computed whole on every rank; what is split is the matrix products, almost all of a step's FLOPs.

An odd number of weight layers (Net-2h: 784-1024-1024-10 has 3) leaves the LAST layer, the output layer,
unpaired: every rank computes it whole. It is under 1 % of Net-2h's training FLOPs (n_out = 10 for MNIST);
splitting it would cost one more Allreduce per step for almost nothing. A hidden width that does not divide
by the ranks is split as evenly as possible (53 units over 2 ranks: 27 + 26); fewer units than ranks is refused.

Every step computes the serial trainer's update, to rounding. ``Shard`` is one rank's part and math;
``train_steps`` times steps under any communicator (mpi4py's with ``parbp.mpi.Watchdog``, or
``parbp.ipp.BoundedComm``); ``TensorParallel`` runs on ``parbp.ipp`` engines; ``run`` under mpiexec.
"""
from __future__ import annotations

import ast
import os
import re
import sys
import time
from itertools import count as counting

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from . import ipp
from .blas import gemm_into
from .checkpoint import save_params
from .cli import fraction, positive_float, positive_int, run as run_cli
from .cpu import bias_sigmoid
from .data import load_first
from .distributed import block, data_arguments, epoch_batches, flags, leading, run_job
from .mpi import RankZeroParser, Refused, Watchdog, _from_rank_zero, refuse
from .nets import init_params, layer_sizes
from .pipeline import Stage
from .results import write_csv
from .train import lr_at

PAIR, REPLICATED = "pair", "replicated"


# ---- The plan: which layers pair up, and how each pair's hidden units split ------------------------------


def blocks(sizes) -> list[tuple[str, int]]:
    """[("pair", l) for l = 0, 2, 4, ...] and, for an odd number of weight layers, ("replicated", L - 1)."""
    L = len(sizes) - 1
    out = [(PAIR, l) for l in range(0, L - 1, 2)]
    return out + [(REPLICATED, L - 1)] if L % 2 else out


def check(sizes, ranks: int) -> None:
    """Raise ValueError unless every pair's hidden width splits over ``ranks`` (at least one unit each)."""
    if not isinstance(ranks, (int, np.integer)) or ranks < 1:
        raise ValueError(f"ranks must be a positive integer, got {ranks!r}")
    net, widths = "-".join(map(str, sizes)), [sizes[l + 1] for kind, l in blocks(sizes) if kind == PAIR]
    if not widths:
        raise ValueError(f"net {net} has no hidden layer to split; tensor parallelism needs at least one, "
                         f"e.g. net='1h' or '2h'")
    if ranks > min(widths):
        raise ValueError(f"cannot split {min(widths)} hidden units over {ranks} ranks (net {net}, split widths "
                         f"{widths}); use 1 to {min(widths)} ranks or wider layers")


def columns(width: int, ranks: int, rank: int) -> slice:
    """Rank ``rank``'s hidden units of a ``width``-unit layer: np.array_split's contiguous slice (the first
    ``width % ranks`` ranks take one unit more)."""
    q, more = divmod(width, ranks)
    return slice(rank * q + min(rank, more), (rank + 1) * q + min(rank + 1, more))


def message_bytes(sizes, batch_size: int, itemsize: int = 4) -> dict:
    """What one step sends through Allreduce: the payload (one B × width buffer per Allreduce, summed), the
    number of Allreduces, and the bytes each rank sends for it in a ring all-reduce, 2(p - 1)/p · payload
    (``sent_bytes``, a function of p: call ``sent_bytes(p)``)."""
    pairs = [l for kind, l in blocks(sizes) if kind == PAIR]
    widths = [sizes[l + 2] for l in pairs] + [sizes[l] for l in pairs[1:]]  # forward outputs, backward input gradients
    payload = batch_size * itemsize * sum(widths)
    return {"allreduces": len(widths), "payload_bytes": payload,
            "sent_bytes": lambda p: 2 * (p - 1) / p * payload if p > 1 else 0.0}


# ---- One rank's part of the network and its math (the serial-blas trainer's kernels) ---------------------


class _Pair(Stage):
    """Rank r's slice of a layer pair: W_a's columns c_r, W_b's rows c_r; b_b whole. A two-layer pipeline
    stage whose forward and backward Allreduce the partial products."""

    def __init__(self, Wa, ba, Wb, bb, cols: slice, first: bool):
        super().__init__([(Wa[:, cols], ba[cols]), (Wb[cols, :], bb)], first=first, last=False)

    def forward(self, x, allreduce) -> list[np.ndarray]:
        (Wa, Wb), (ba, bb) = self.W, self.b
        h, z = np.empty((len(x), Wa.shape[1]), np.float32), np.empty((len(x), Wb.shape[1]), np.float32)
        gemm_into(x, Wa, h)
        bias_sigmoid(h, ba)
        gemm_into(h, Wb, z)  # this rank's share of Z; the bias is added once, after the sum
        allreduce(z, "Allreduce of a layer pair's activations (forward)")
        bias_sigmoid(z, bb)
        return [x, h, z]

    def backward(self, acts, delta, allreduce):
        below = super().backward(acts, delta)  # the stage's math on the slices; None on the first pair (the data)
        if below is not None:
            allreduce(below, "Allreduce of a layer pair's input gradient (backward)")
        return below  # dL/d(input): the block below applies σ' of its own output


class _Replicated(Stage):
    """An unpaired layer, whole on every rank: a one-layer stage that never communicates."""

    def forward(self, x, allreduce) -> list[np.ndarray]:
        return super().forward(x)

    def backward(self, acts, delta, allreduce):
        return super().backward(acts, delta)


class Shard:
    """Rank ``rank`` of ``ranks``: its slices of every pair and the replicated layer; one SGD step at a time.

    ``allreduce(buf, what)`` sums ``buf`` over the ranks in place; ``step`` hands it to the blocks."""

    def __init__(self, params, rank: int, ranks: int):
        self.sizes = [params[0][0].shape[0]] + [W.shape[1] for W, _ in params]
        check(self.sizes, ranks)
        if not 0 <= rank < ranks:
            raise ValueError(f"rank {rank} is not one of 0 .. {ranks - 1}")
        self.rank, self.ranks = rank, ranks
        self.blocks = [_Pair(*params[l], *params[l + 1], columns(self.sizes[l + 1], ranks, rank), first=i == 0)
                       if kind == PAIR else _Replicated([params[l]], first=i == 0, last=True)
                       for i, (kind, l) in enumerate(blocks(self.sizes))]

    def step(self, X, Y, lr, allreduce) -> float:
        """One SGD step on the whole minibatch (X, Y, the same on every rank); returns its loss."""
        acts, x = [], np.ascontiguousarray(X, np.float32)
        for blk in self.blocks:
            acts.append(blk.forward(x, allreduce))
            x = acts[-1][-1]
        sse, delta = self.blocks[-1].output_delta(x, Y, len(X))
        for i in reversed(range(len(self.blocks))):
            below = self.blocks[i].backward(acts[i], delta, allreduce)
            if below is not None:
                delta = self.blocks[i - 1].input_delta(below, acts[i - 1][-1])  # σ' of the block below's output
        for blk in self.blocks:
            blk.update(lr)
        return sse / len(X)

    @property
    def parts(self) -> list[list[np.ndarray]]:
        """This rank's arrays, block by block: [Wa slice, Wb slice, ba slice, bb] or [W, b]; ``assemble`` joins them."""
        return [[a.copy() for a in (*blk.W, *blk.b)] for blk in self.blocks]


def assemble(parts_by_rank, sizes) -> list[tuple[np.ndarray, np.ndarray]]:
    """The whole network's [(W, b), ...] from every rank's ``Shard.parts`` (in rank order)."""
    params = []
    for i, (kind, _) in enumerate(blocks(sizes)):
        arrays = list(zip(*(p[i] for p in parts_by_rank)))  # each array of block i: one per rank
        if kind == PAIR:
            Wa, Wb, ba, bb = arrays
            params += [(np.concatenate(Wa, axis=1), np.concatenate(ba)), (np.concatenate(Wb), bb[0])]
        else:
            params.append((arrays[0][0], arrays[1][0]))  # replicated: rank 0's copy
    return params


# ---- Steps under a communicator, timed -------------------------------------------------------------------


def train_steps(shard: Shard, X, Y, batches, lr: float, comm, dog) -> dict:
    """One SGD step per index array of ``batches``; per step its seconds, the part spent in Allreduce
    (``comm_s``, waiting for the slowest rank included), the rest (``compute_s``) and the loss, plus the bytes
    this rank sends per step (``message_bytes``). ``comm`` needs ``Allreduce(MPI.IN_PLACE, buf)``, ``dog`` a
    bounding ``wait(what)`` context: ``parbp.mpi.Watchdog``, or a ``parbp.ipp.BoundedComm`` as both."""
    from mpi4py import MPI

    step_s, comm_s, losses, B = [], [], [], 0

    def allreduce(buf, what):
        t0 = time.perf_counter()
        with dog.wait(what):
            comm.Allreduce(MPI.IN_PLACE, buf)
        comm_s[-1] += time.perf_counter() - t0

    for idx in batches:
        B, t0 = len(idx), time.perf_counter()
        comm_s.append(0.0)
        losses.append(shard.step(X[idx], Y[idx], lr, allreduce))
        step_s.append(time.perf_counter() - t0)
    sent = message_bytes(shard.sizes, B)
    return {"rank": shard.rank, "step_s": step_s, "comm_s": comm_s,
            "compute_s": [s - c for s, c in zip(step_s, comm_s)], "loss": losses,
            **sent, "sent_bytes": sent["sent_bytes"](shard.ranks)}


# ---- On parbp.ipp's MPI engines --------------------------------------------------------------------------


def _tp_setup(key, params, X, Y, seed):
    comm = ipp._comm()
    shard = Shard(params, comm.rank, comm.size)
    ipp._state[key] = dict(shard=shard, X=X, Y=Y, seed=seed)
    train_steps(shard, X, Y, [np.arange(2)], 0.0, comm, comm)  # warm-up (numba compiles here), learning nothing
    return comm.rank


def _tp_run(key, epoch, batch_size, lr, first, count):
    S, comm = ipp._state[key], ipp._comm()
    batches = block(epoch_batches(len(S["X"]), epoch, S["seed"], batch_size), first, count)
    out = ipp.timed_block(comm, lambda: train_steps(S["shard"], S["X"], S["Y"], batches, lr, comm, comm))
    return {**out, "steps": len(out["step_s"])}


def _tp_parts(key):
    return ipp._state[key]["shard"].parts


class TensorParallel(ipp.EngineModel):
    """Every layer pair's hidden units split over the MPI engines of ``parbp.ipp.Engines``; the same
    ``run_steps`` / ``train_epoch`` / ``fit`` / ``params`` as its ``DataParallel`` and ``ModelParallel``.
    Every engine holds the whole training set (each step's minibatch is whole on every rank)."""

    name = "tensor parallel"

    def __init__(self, engines, ds, net="2h", seed: int = 0):
        self.place(engines, ds, net, seed)
        check(self.eval.sizes, self.workers)  # before anything is sent
        self.on_engines(_tp_setup, self.eval.params, ds.X_train, ds.Y_train, seed,
                        what="receiving the data and its slices", deadline=engines.timeout + 60)
        self.steps: list[dict] = []  # per step: seconds, compute and communication (the slowest rank's)

    def run_steps(self, epoch, B, lr, first=0, count=None) -> dict:
        out, block_ = self.run_block(_tp_run, epoch, B, lr, first, count)
        self.steps += [{k: max(o[k][step] for o in out) for k in ("step_s", "comm_s", "compute_s")}
                       for step in range(out[0]["steps"])]
        return {"train_loss": float(np.mean(out[0]["loss"])) if out[0]["loss"] else float("nan"), **block_,
                "sent_bytes_per_step": out[0]["sent_bytes"]}

    def train_epoch(self, epoch, B, lr) -> dict:
        return {k: v for k, v in self.run_steps(epoch, B, lr).items() if k != "cpu_share"}

    @property
    def params(self):
        parts = self.on_engines(_tp_parts, what="sending its slices", deadline=self.eng.timeout)
        return assemble(parts, self.eval.sizes)


# ---- Under mpiexec ---------------------------------------------------------------------------------------


def parser():
    p = RankZeroParser(prog="mpiexec -n N python -m parbp.tensor_parallel", description=__doc__.split("\n\n")[0])
    data_arguments(p)
    p.add_argument("--steps", type=positive_int, default=20, help="minibatches to train, in the data-parallel order")
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--lr-decay", type=fraction, default=0.0, help="fraction the lr shrinks after each epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=positive_float, default=20.0,
                   help="seconds an Allreduce may wait before the job is aborted")
    p.add_argument("--out", default=None, help="CSV (rank 0 writes it): one row per rank and step")
    p.add_argument("--params-out", default=None, help="rank 0 saves the final network here (parbp.checkpoint)")
    return p


def _load(args, ranks: int):
    """The dataset, checked against the ranks and the batch size (on rank 0)."""
    ds = load_first(args.dataset, args.subset, args.seed)
    check(layer_sizes(args.net, ds.n_in, ds.n_out), ranks)
    if len(ds.X_train) < args.batch_size:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {len(ds.X_train)} training examples")
    return ds


def _train(args, comm, ds, shard) -> list[dict]:
    """``--steps`` steps in the data-parallel minibatch order, epoch after epoch; one row per step."""
    dog, X, Y = Watchdog(comm, args.timeout), ds.X_train, ds.Y_train
    steps = ((epoch, idx) for epoch in counting() for idx in epoch_batches(len(X), epoch, args.seed, args.batch_size))
    rows = []
    with threadpool_limits(1):
        train_steps(shard, X, Y, [np.arange(2)], 0.0, comm, dog)  # warm-up, learning nothing
        for step, (epoch, idx) in enumerate(block(steps, 0, args.steps)):
            out = train_steps(shard, X, Y, [idx], lr_at(args.lr, args.lr_decay, epoch), comm, dog)
            rows.append({"rank": comm.rank, "epoch": epoch, "step": step,
                         **{k: out[k][0] for k in ("step_s", "compute_s", "comm_s", "loss")},
                         **{k: out[k] for k in ("allreduces", "payload_bytes", "sent_bytes")}})
    return rows


def main(argv=None) -> int:
    from mpi4py import MPI

    args = parser().parse_args(argv)
    comm = MPI.COMM_WORLD
    pids = comm.gather(os.getpid(), root=0)
    if comm.rank == 0:  # mpiexec names a dead rank by its pid: this line lets ``run`` name its rank
        print(f"parbp.tensor_parallel: rank pids {dict(enumerate(pids))}", file=sys.stderr, flush=True)
    try:  # rank 0 reads and checks, every rank stops together on a problem
        ds = _from_rank_zero(comm, lambda: _load(args, comm.size))
    except Refused as e:
        return refuse(comm, e)
    sizes = layer_sizes(args.net, ds.n_in, ds.n_out)
    shard = Shard(init_params(sizes, args.seed), comm.rank, comm.size)
    rows = comm.gather(_train(args, comm, ds, shard), root=0)
    parts = comm.gather(shard.parts, root=0)
    if comm.rank == 0:
        net = args.net if isinstance(args.net, str) else "-".join(map(str, sizes))
        df = leading(pd.DataFrame([r for rs in rows for r in rs]),
                     {"net": net, "dataset": args.dataset, "processes": comm.size, "batch_size": args.batch_size})
        if args.out:
            write_csv(df, args.out)
        if args.params_out:
            save_params(args.params_out, assemble(parts, sizes), {"net": net, "processes": comm.size})
        ms = 1e3 * df.groupby("step")[["step_s", "compute_s", "comm_s"]].max().median()  # the slowest rank's
        print(f"tensor parallel x{comm.size}, net {net}, batch {args.batch_size}: median step {ms.step_s:.1f} ms "
              f"(compute {ms.compute_s:.1f} ms, Allreduce {ms.comm_s:.1f} ms), {df.sent_bytes.iloc[0] / 2**20:.2f} MiB "
              f"sent per rank and step, loss {df.loss.iloc[-1]:.4f}", flush=True)
    return 0


def run(processes: int, timeout: float = 600, out=None, watchdog: float | None = None, **options):
    """``mpiexec -n processes python -m parbp.tensor_parallel ...``; its CSV as a DataFrame. ``options``
    become flags (``batch_size=100`` -> ``--batch-size 100``). A job that fails raises RuntimeError; when a
    rank died, the message names it (mpiexec names only its pid)."""
    return run_job("parbp.tensor_parallel", processes, flags({**options, "timeout": watchdog}), timeout, out, dead_rank)


def dead_rank(text: str) -> str:
    """', rank R (pid P) died' from mpiexec's 'BAD TERMINATION ... PID P' and the ranks' pid line; '' if neither."""
    pids, dead = re.search(r"rank pids (\{[^}]*\})", text), re.search(r"PID (\d+) RUNNING AT", text)
    if not (pids and dead):
        return ""
    pid = int(dead.group(1))
    rank = {p: r for r, p in ast.literal_eval(pids.group(1)).items()}.get(pid)
    return f": pid {pid} died" if rank is None else f": rank {rank} (pid {pid}) died"


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="parbp.tensor_parallel"))
