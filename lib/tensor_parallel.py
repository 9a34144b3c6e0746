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

so a pair moves its output's activations forward and its input's gradient backward, and nothing else:
no weights, no weight gradients. The first pair's input is the data, which needs no gradient, so the
first pair skips its backward Allreduce. b_b and everything after the Allreduce are computed whole on
every rank (identical results from identical inputs); the work split across ranks is the matrix products
of both layers, almost all of a step's FLOPs.

An odd number of weight layers (Net-2h: 784-1024-1024-10 has 3) leaves the LAST layer unpaired: it is
replicated, every rank computes it whole from the pair's whole output, with no communication. It is the
output layer, k × n_out with n_out small (10 for MNIST), under 1 % of Net-2h's training FLOPs; splitting
it would cost one more Allreduce per step for almost nothing. A hidden width that does not divide by the ranks is
split as evenly as possible (53 units over 2 ranks: 27 + 26); fewer hidden units than ranks is refused.

Every step computes the serial trainer's update, to rounding. ``Shard`` is one rank's part and math;
``train_steps`` runs steps under any communicator (an mpi4py one with ``parbp.mpi.Watchdog``, or
``parbp.ipp.BoundedComm`` on ipyparallel engines, whose waits have deadlines) and times each step's compute
and communication; ``TensorParallel`` runs it on ``parbp.ipp`` engines; ``run`` under mpiexec.
"""
from __future__ import annotations

import os
import re
import sys
import time

import numpy as np

from .data import load_first
from .distributed import block, data_arguments, epoch_batches, flags, leading, run_job
from . import ipp
from .ipp import EngineModel
from .mpi import Watchdog
from .blas import gemm_into
from .cpu import bias_sigmoid, column_sums, hidden_delta, output_delta
from .nets import init_params, layer_sizes
from .pipeline import Stage
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
    pairs = [l for kind, l in blocks(sizes) if kind == PAIR]
    if not pairs:
        raise ValueError(f"net {'-'.join(map(str, sizes))} has no hidden layer to split; tensor parallelism needs "
                         f"at least one, e.g. net='1h' or '2h'")
    narrowest = min(sizes[l + 1] for l in pairs)
    if ranks > narrowest:
        raise ValueError(f"cannot split {narrowest} hidden units over {ranks} ranks (net {'-'.join(map(str, sizes))}, "
                         f"split widths {[sizes[l + 1] for l in pairs]}); use 1 to {narrowest} ranks or wider layers")


def columns(width: int, ranks: int, rank: int) -> slice:
    """Rank ``rank``'s hidden units of a ``width``-unit layer: np.array_split's contiguous slice."""
    sizes = [len(a) for a in np.array_split(np.arange(width), ranks)]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def message_bytes(sizes, batch_size: int, itemsize: int = 4) -> dict:
    """What one step sends through Allreduce: the payload (one B × width buffer per Allreduce, summed), the
    number of Allreduces, and the bytes each rank sends for it in a ring all-reduce, 2(p - 1)/p · payload
    (``sent_bytes``, a function of p: call ``sent_bytes(p)``)."""
    widths = []
    for i, (kind, l) in enumerate(blocks(sizes)):
        if kind == PAIR:
            widths.append(sizes[l + 2])  # forward: the pair's output
            if i > 0:
                widths.append(sizes[l])  # backward: the gradient of the pair's input
    payload = batch_size * itemsize * sum(widths)
    return {"allreduces": len(widths), "payload_bytes": payload,
            "sent_bytes": lambda p: 2 * (p - 1) / p * payload if p > 1 else 0.0}


# ---- One rank's part of the network and its math (the serial-blas trainer's kernels) ---------------------


class _Pair(Stage):
    """Rank r's slice of a layer pair: W_a's columns c_r, W_b's rows c_r; b_b whole. A pipeline stage's
    weights, gradients and update, its own forward and backward."""

    def __init__(self, Wa, ba, Wb, bb, cols: slice, first: bool):
        super().__init__([(Wa[:, cols], ba[cols]), (Wb[cols, :], bb)], first=first, last=False)

    def forward(self, x, allreduce) -> list[np.ndarray]:
        (Wa, Wb), (ba, bb) = self.W, self.b
        h = np.empty((x.shape[0], Wa.shape[1]), np.float32)
        gemm_into(x, Wa, h)
        bias_sigmoid(h, ba)
        z = np.empty((x.shape[0], Wb.shape[1]), np.float32)
        gemm_into(h, Wb, z)  # this rank's share of Z; the bias is added once, after the sum
        allreduce(z, "Allreduce of a layer pair's activations (forward)")
        bias_sigmoid(z, bb)
        return [x, h, z]

    def backward(self, acts, delta, allreduce):
        x, h, _ = acts
        (Wa, Wb), (gWa, gWb), (gba, gbb) = self.W, self.gW, self.gb
        gemm_into(h, delta, gWb, trans_a=True)
        column_sums(delta, gbb)
        dh = np.empty_like(h)
        gemm_into(delta, Wb, dh, trans_b=True)
        hidden_delta(dh, h)
        gemm_into(x, dh, gWa, trans_a=True)
        column_sums(dh, gba)
        if self.first:
            return None  # the data needs no gradient
        below = np.empty_like(x)
        gemm_into(dh, Wa, below, trans_b=True)
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
        self.blocks = []
        for i, (kind, l) in enumerate(blocks(self.sizes)):
            if kind == PAIR:
                cols = columns(self.sizes[l + 1], ranks, rank)
                self.blocks.append(_Pair(*params[l], *params[l + 1], cols, first=i == 0))
            else:
                self.blocks.append(_Replicated([params[l]], first=i == 0, last=True))

    def step(self, X, Y, lr, allreduce) -> float:
        """One SGD step on the whole minibatch (X, Y, the same on every rank); returns its loss."""
        acts, x = [], np.ascontiguousarray(X, np.float32)
        for blk in self.blocks:
            acts.append(blk.forward(x, allreduce))
            x = acts[-1][-1]
        B = X.shape[0]
        delta = np.empty_like(x)
        sse = output_delta(x, np.ascontiguousarray(Y, np.float32), delta, np.float32(2.0 / B))
        for i in range(len(self.blocks) - 1, -1, -1):
            below = self.blocks[i].backward(acts[i], delta, allreduce)
            if below is not None:
                hidden_delta(below, acts[i - 1][-1])  # σ' of the block below's output
                delta = below
        for blk in self.blocks:
            blk.update(lr)
        return float(sse) / B

    @property
    def parts(self) -> list[list[np.ndarray]]:
        """This rank's arrays, block by block: [Wa slice, ba slice, Wb slice, bb] or [W, b]; ``assemble`` joins them."""
        return [[*(W.copy() for W in blk.W), *(b.copy() for b in blk.b)] for blk in self.blocks]


def assemble(parts_by_rank, sizes) -> list[tuple[np.ndarray, np.ndarray]]:
    """The whole network's [(W, b), ...] from every rank's ``Shard.parts`` (in rank order)."""
    params = []
    for i, (kind, _) in enumerate(blocks(sizes)):
        mine = [p[i] for p in parts_by_rank]
        if kind == PAIR:
            params += [(np.concatenate([m[0] for m in mine], axis=1), np.concatenate([m[2] for m in mine])),
                       (np.concatenate([m[1] for m in mine], axis=0), mine[0][3])]
        else:
            params.append((mine[0][0], mine[0][1]))
    return params


# ---- Steps under a communicator, timed -------------------------------------------------------------------


def train_steps(shard: Shard, X, Y, batches, lr: float, comm, dog) -> dict:
    """Run one SGD step per index array of ``batches`` under ``comm``; per step its seconds, the part spent
    in Allreduce (``comm_s``, which includes waiting for the slowest rank), the rest (``compute_s``) and
    the loss, plus the bytes this rank sends per step (``message_bytes``).

    ``comm`` needs ``Allreduce(MPI.IN_PLACE, buf)``; ``dog`` a ``wait(what)`` context manager that bounds the
    wait: ``parbp.mpi.Watchdog`` under mpiexec, or pass a ``parbp.ipp.BoundedComm`` as both."""
    from mpi4py import MPI

    spent = [0.0]

    def allreduce(buf, what):
        t0 = time.perf_counter()
        with dog.wait(what):
            comm.Allreduce(MPI.IN_PLACE, buf)
        spent[0] += time.perf_counter() - t0

    step_s, comm_s, losses, B = [], [], [], None
    for idx in batches:
        B = len(idx)
        spent[0] = 0.0
        t0 = time.perf_counter()
        losses.append(shard.step(X[idx], Y[idx], lr, allreduce))
        step_s.append(time.perf_counter() - t0)
        comm_s.append(spent[0])
    sent = message_bytes(shard.sizes, B or 0)
    return {"rank": shard.rank, "step_s": step_s, "comm_s": comm_s,
            "compute_s": [s - c for s, c in zip(step_s, comm_s)], "loss": losses,
            "allreduces": sent["allreduces"], "payload_bytes": sent["payload_bytes"],
            "sent_bytes": sent["sent_bytes"](shard.ranks)}


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

    def run():
        out = train_steps(S["shard"], S["X"], S["Y"], batches, lr, comm, comm)
        return {**out, "steps": len(out["step_s"])}

    return ipp.timed_block(comm, run)


def _tp_parts(key):
    return ipp._state[key]["shard"].parts


class TensorParallel(EngineModel):
    """Every layer pair's hidden units split over the MPI engines of ``parbp.ipp.Engines``; the same
    ``run_steps`` / ``train_epoch`` / ``fit`` / ``params`` as its ``DataParallel`` and ``ModelParallel``.
    Every engine holds the whole training set (each step's minibatch is whole on every rank)."""

    name = "tensor parallel"

    def __init__(self, engines, ds, net="2h", seed: int = 0):
        self.place(engines, ds, net, seed)
        self.sizes = self.eval.sizes
        check(self.sizes, self.workers)  # before anything is sent
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
        r = self.run_steps(epoch, B, lr)
        r.pop("cpu_share")
        return r

    @property
    def params(self):
        return assemble(self.on_engines(_tp_parts, what="sending its slices", deadline=self.eng.timeout), self.sizes)



# ---- Under mpiexec ---------------------------------------------------------------------------------------


def parser():
    from .cli import fraction, positive_float, positive_int
    from .mpi import RankZeroParser

    p = RankZeroParser(prog="mpiexec -n N python -m parbp.tensor_parallel", description=__doc__.split("\n\n")[0])
    data_arguments(p)
    p.add_argument("--steps", type=positive_int, default=20, help="minibatches to train, in the data-parallel order")
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--lr-decay", type=fraction, default=0.0, help="fraction the lr shrinks after each epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=positive_float, default=20.0, help="seconds an Allreduce may wait before the job is aborted")
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
    """``--steps`` steps in the data-parallel minibatch order; one row per step."""
    from threadpoolctl import threadpool_limits

    dog = Watchdog(comm, args.timeout)
    per_epoch = len(ds.X_train) // args.batch_size
    rows, done = [], 0
    with threadpool_limits(1):
        train_steps(shard, ds.X_train, ds.Y_train, [np.arange(2)], 0.0, comm, dog)  # warm-up, learning nothing
        for epoch in range(-(-args.steps // per_epoch)):
            count = min(per_epoch, args.steps - done)
            batches = block(epoch_batches(len(ds.X_train), epoch, args.seed, args.batch_size), 0, count)
            out = train_steps(shard, ds.X_train, ds.Y_train, batches, lr_at(args.lr, args.lr_decay, epoch), comm, dog)
            rows += [{"rank": comm.rank, "epoch": epoch, "step": done + k, "step_s": s, "compute_s": c, "comm_s": m,
                      "loss": l, "allreduces": out["allreduces"], "payload_bytes": out["payload_bytes"],
                      "sent_bytes": out["sent_bytes"]}
                     for k, (s, c, m, l) in enumerate(zip(out["step_s"], out["compute_s"], out["comm_s"], out["loss"]))]
            done += count
    return rows


def main(argv=None) -> int:
    from mpi4py import MPI

    from .mpi import Refused, _from_rank_zero, refuse

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
        import pandas as pd

        from .checkpoint import save_params
        from .results import write_csv

        net = args.net if isinstance(args.net, str) else "-".join(map(str, sizes))
        df = leading(pd.DataFrame([r for rs in rows for r in rs]),
                     {"net": net, "dataset": args.dataset, "processes": comm.size, "batch_size": args.batch_size})
        if args.out:
            write_csv(df, args.out)
        if args.params_out:
            save_params(args.params_out, assemble(parts, sizes), {"net": net, "processes": comm.size})
        slow = df.groupby("step")[["step_s", "compute_s", "comm_s"]].max().median()
        print(f"tensor parallel x{comm.size}, net {net}, batch {args.batch_size}: median step {1e3 * slow.step_s:.1f} ms "
              f"(compute {1e3 * slow.compute_s:.1f} ms, Allreduce {1e3 * slow.comm_s:.1f} ms), "
              f"{df.sent_bytes.iloc[0] / 2**20:.2f} MiB sent per rank and step, loss {df.loss.iloc[-1]:.4f}", flush=True)
    return 0


def run(processes: int, timeout: float = 600, out=None, watchdog: float | None = None, **options):
    """``mpiexec -n processes python -m parbp.tensor_parallel ...``; its CSV as a DataFrame. ``options``
    become flags (``batch_size=100`` -> ``--batch-size 100``). A job that fails raises RuntimeError; when a
    rank died, the message names it (mpiexec names only its pid)."""
    return run_job("parbp.tensor_parallel", processes, flags({**options, "timeout": watchdog}), timeout, out, dead_rank)


def dead_rank(text: str) -> str:
    """', rank R (pid P) died' from mpiexec's 'BAD TERMINATION ... PID P' and the ranks' pid line; '' if neither."""
    pids = re.search(r"rank pids (\{[^}]*\})", text)
    dead = re.search(r"PID (\d+) RUNNING AT", text)
    if not (pids and dead):
        return ""
    import ast

    by_pid = {pid: r for r, pid in ast.literal_eval(pids.group(1)).items()}
    pid = int(dead.group(1))
    return f": rank {by_pid[pid]} (pid {pid}) died" if pid in by_pid else f": pid {pid} died"


if __name__ == "__main__":
    from .cli import run as _run

    sys.exit(_run(main, prog="parbp.tensor_parallel"))
