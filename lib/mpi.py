"""Distributed SGD with MPI (mpi4py): the three schemes of seeds 002 and 003, on real processes.

    mpiexec -n 4 python -m parbp.mpi --mode allreduce --net 1h --dataset mnist --epochs 5 --batch-size 100

Modes (every rank builds the same trainer from the same seed; rank 0 broadcasts its parameters anyway):

  allreduce  synchronous data parallelism. Each minibatch of B examples is split across the ranks; each
             rank's gradient of its slice is scaled by B_r/B so that the *sum* over ranks is the whole
             minibatch's gradient (the loss is a mean, seed 002 eq. for λ_i). Gradients and loss travel in
             ONE buffer through ONE Allreduce and every rank applies the same update: the serial trainer
             on the same data order, to rounding.
  average    seed 003's synchronous method. Each rank runs plain SGD on its shard of the training set;
             every ``--sync-every`` steps (0 = once per epoch) an Allreduce averages the parameters
             (v = 1/c Σ w_i: seed 003's reduce + broadcast in one call). With ``--whole-data`` every rank
             passes over the whole training set in its own order: p times the examples, serial SGD's steps.
  async      seed 003's asynchronous method as seed 002's parameter server. Rank 0 holds v and applies
             updates as they arrive; ranks 1..N-1 each run ``--sync-every`` local SGD steps on their shard
             from the v they last received, send the change (w - v_old) and get the current v back. No
             global barrier. Staleness = the updates the server applied between a worker's pull and push.
             ``--async-rule`` says how the server takes a push (``TAKE_PUSH``).

Rank 0 writes one tidy CSV with ``--out`` (atomically): a row per epoch (completed, from 1) and rank, with
loss, accuracy, time and each rank's CPU use and peak memory. ``run(...)`` is the notebooks' driver.

Checkpoints (allreduce and average): with ``--checkpoint PATH`` rank 0 saves the parameters, the rows and
the epoch after every epoch (``parbp.checkpoint``); the same command with ``--resume`` continues from it.
Every rank's minibatch order is a function of (seed, epoch, rank) alone, so a resumed run ends with an
uninterrupted one's parameters, bit for bit. A checkpoint of another world size (it decides the shards and
the splits), net, dataset, mode, seed, ... is refused, naming the field. ``async`` has none (see parse_args).

Failure handling: mpich's mpiexec (hydra) kills the job when a rank dies. For a rank that hangs or is
stopped, every rank runs a watchdog thread: a blocking call that waits longer than ``--timeout`` seconds
makes the rank print which call and abort the whole job.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from . import checkpoint, trainers
from .cli import Parser, check_choice, fraction, nonnegative_int, positive_float, positive_int
from .data import load_first
from .distributed import (Flat, PackedGradients, allreduce_step, block, data_arguments, epoch_batches, epoch_order,
                          flags, leading, run_job)
from .train import evaluate, history_row, lr_at, minibatches

MODES = ("allreduce", "average", "async")
# How the parameter server takes a push into v: ``pushed`` is the worker's change (w - v_old), or its w (replace)
TAKE_PUSH = {"delta": lambda v, pushed, stale: np.add(v, pushed, out=v),
             "staleness": lambda v, pushed, stale: np.add(v, pushed / max(stale, 1), out=v),  # Zhang et al.: lr / τ
             "replace": lambda v, pushed, stale: np.copyto(v, pushed)}  # seed 003 read literally: v = w_i
ASYNC_RULES = tuple(TAKE_PUSH)


# ---- Per-rank bookkeeping: CPU, memory and a watchdog on blocking calls ----------------------------------


class Usage:
    """CPU use (% of one core) between two marks, and resident / peak memory of this process."""

    def __init__(self):
        self.mark()

    def mark(self):
        self._cpu, self._wall = time.process_time(), time.perf_counter()  # CPU: user + system, every thread

    def read(self) -> dict:
        wall = max(time.perf_counter() - self._wall, 1e-9)
        out = {"cpu_percent": 100.0 * (time.process_time() - self._cpu) / wall,
               "rss_mib": psutil.Process().memory_info().rss / 2**20,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}  # Linux: KiB
        self.mark()
        return out


class Watchdog:
    """Aborts the whole MPI job when one blocking call waits longer than ``timeout`` seconds: mpiexec notices
    a rank that *dies*, not one that hangs or is stopped, which leaves the others spinning in a receive."""

    def __init__(self, comm, timeout: float):
        self.comm, self.timeout, self._what, self._since = comm, timeout, None, 0.0
        threading.Thread(target=self._watch, daemon=True).start()

    @contextlib.contextmanager
    def wait(self, what: str):
        """Wrap a blocking call: the watchdog times it."""
        self._what, self._since = what, time.monotonic()
        try:
            yield
        finally:
            self._what = None

    def _watch(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            what = self._what
            if what is not None and time.monotonic() - self._since > self.timeout:
                abort(self.comm, f"rank {self.comm.rank}: {what} got no answer for {self.timeout:g} s; "
                                 f"a peer rank has probably died or hung")


def abort(comm, message: str):
    """Print why, then end the whole job: MPI_Abort, or, if that does not return promptly (it can wait on a
    lock held by a thread spinning in a collective), exit this process, which mpiexec also takes as failure."""
    print(f"parbp.mpi: {message}. Aborting the job.", file=sys.stderr, flush=True)
    time.sleep(0.5)  # the launcher's proxy forwards the line; an abort at once can tear it down first
    threading.Timer(2.0, os._exit, args=(3,)).start()
    comm.Abort(3)


# ---- The three modes. Each returns (rows, trainer): rank 0's rows (one per epoch and rank; [] elsewhere). ----


def _setup(args, comm):
    # rank 0 decodes the files once and sends the arrays: p ranks decoding them at once would fight over the cores
    ds = _from_rank_zero(comm, lambda: load_first(args.dataset, args.subset, args.seed))
    trainer = trainers.get(args.impl)(net=args.net, n_in=ds.n_in, n_out=ds.n_out, dtype=args.dtype, seed=args.seed,
                                      **loss_option(args.loss))
    flat = Flat(trainer.sizes, trainer.dtype, extra=1)  # the extra slot carries the loss
    buf = flat.pack(trainer.params, flat.empty())
    resumed = _restore(args, comm, ds, trainer, flat, buf)
    comm.Bcast(buf, root=0)  # identical starting point everywhere, whatever each rank's RNG did
    trainer.params = flat.views(buf)
    trainer.gradients(ds.X_train[:2], ds.Y_train[:2])  # warm-up (numba trainers compile here), not timed
    return ds, trainer, flat, resumed


class Refused(Exception):
    """Data or a checkpoint this run cannot use; every rank raises it together, rank 0 says why."""


def refuse(comm, problem) -> int:
    """Every rank stops with exit status 2; rank 0 says why, once."""
    if comm.rank == 0:
        print(f"error: {problem}", file=sys.stderr, flush=True)
    return 2


def _from_rank_zero(comm, read, default=None):
    """``read()`` on rank 0, its value sent to every rank. A user error there (a missing file, a subset
    too large, a checkpoint of another run) makes every rank raise Refused together."""
    value, problem = default, None
    if comm.rank == 0:
        try:
            value = read()
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            problem = str(e)
    value, problem = comm.bcast((value, problem), root=0)
    if problem:
        raise Refused(problem)
    return value


def _identity(args, comm, ds, trainer) -> dict:
    return {"mode": args.mode, "processes": comm.size, "impl": args.impl, "sizes": list(trainer.sizes),
            "dtype": str(trainer.dtype), "dataset": checkpoint.data_fingerprint(ds), "subset": args.subset,
            "batch_size": args.batch_size, "lr": args.lr, "lr_decay": args.lr_decay,
            "sync_every": args.sync_every, "seed": args.seed, "whole_data": args.whole_data, "loss": args.loss}


def _restore(args, comm, ds, trainer, flat, buf) -> dict:
    """Rank 0 reads ``--checkpoint`` (if resuming) into ``buf``; every rank gets the saved progress
    ({} for a fresh run) or raises Refused together with the others."""
    if not args.checkpoint:
        return {}

    def read():
        path = Path(args.checkpoint)
        if not path.exists():
            return {}
        if not args.resume:
            raise FileExistsError(f"checkpoint {path} exists; add --resume to continue it, or delete it to start over")
        params, state = checkpoint.load(path)
        try:
            checkpoint.check_identity(state, _identity(args, comm, ds, trainer), path)
        except checkpoint.CheckpointMismatch as e:
            n = state.get("identity", {}).get("processes")
            hint = f". It was written by {n} processes: resume it with mpiexec -n {n}" if n != comm.size else ""
            raise checkpoint.CheckpointMismatch(f"{e}{hint}") from None
        if state["epoch"] > args.epochs:
            raise ValueError(f"checkpoint {path} is at epoch {state['epoch']}, beyond --epochs {args.epochs}")
        flat.pack(params, buf)  # _setup broadcasts it and gives it to the trainer
        return state

    return _from_rank_zero(comm, read, {})


def _epochs(args, comm, dog, ds, trainer, resumed, train_epoch):
    """The synchronous modes' epochs: ``train_epoch(epoch, lr)`` returns the epoch's training loss and the
    counters to record and checkpoint with it; rank 0 evaluates and saves, every rank reports its usage."""
    usage, rows, elapsed = Usage(), resumed.get("rows", []), resumed.get("elapsed", 0.0)
    for epoch in range(resumed.get("epoch", 0), args.epochs):
        lr = lr_at(args.lr, args.lr_decay, epoch)
        usage.mark()
        t0 = time.perf_counter()
        loss, counters = train_epoch(epoch, lr)
        dt = time.perf_counter() - t0
        elapsed += dt
        shared = {**_summary(trainer, ds, epoch, lr, loss, dt, elapsed), **counters} if comm.rank == 0 else {}
        with dog.wait("gathering the epoch's usage"):  # a rank stopped here must not hang the others either
            everyone = comm.gather({"rank": comm.rank, **usage.read()}, root=0)
        if comm.rank == 0:
            rows += [{**shared, **r} for r in everyone]
            if args.checkpoint:  # the state after epoch + 1 epochs, atomically
                checkpoint.save(args.checkpoint, trainer.params, {"identity": _identity(args, comm, ds, trainer),
                                "epoch": epoch + 1, "rows": rows, "elapsed": elapsed, **counters})
    return rows, trainer


def train_allreduce(args, comm, dog):
    ds, trainer, _, resumed = _setup(args, comm)
    B = args.batch_size
    if len(ds.X_train) < B:  # every rank has the same data, so every rank stops here together
        raise SystemExit(f"error: --batch-size {B} is larger than the {len(ds.X_train)} training examples")
    packed = PackedGradients(trainer)

    def train_epoch(epoch, lr):
        batches = epoch_batches(len(ds.X_train), epoch, args.seed, B)
        slices = (np.array_split(idx, comm.size)[comm.rank] for idx in batches)
        losses = [allreduce_step(trainer, packed, ds.X_train[i], ds.Y_train[i], B, lr, comm, dog) for i in slices]
        return sum(losses) / len(losses), {}

    return _epochs(args, comm, dog, ds, trainer, resumed, train_epoch)


def train_average(args, comm, dog):
    from mpi4py import MPI

    ds, trainer, flat, resumed = _setup(args, comm)
    size, rank, B = comm.size, comm.rank, args.batch_size
    everything = np.arange(len(ds.X_train))
    shard = everything if args.whole_data else np.array_split(everything, size)[rank]
    # every rank must take the same number of steps or the averaging collectives would not match up
    steps_per_epoch = (len(ds.X_train) // (1 if args.whole_data else size)) // B
    if steps_per_epoch == 0:
        raise SystemExit(f"error: {len(ds.X_train)} examples over {size} ranks leave fewer than "
                         f"--batch-size {B} per shard; use fewer ranks, a smaller batch or more data")
    buf, syncs = flat.empty(), resumed.get("syncs", 0)

    def average():
        nonlocal syncs
        flat.pack(trainer.params, buf)
        with dog.wait("Allreduce of the parameters"):
            comm.Allreduce(MPI.IN_PLACE, buf)
        buf[:] /= size
        trainer.params = flat.views(buf)
        syncs += 1

    def train_epoch(epoch, lr):
        loss_sum, order = 0.0, shard[epoch_order(len(shard), epoch, args.seed + 1000 * rank)]
        for s, idx in enumerate(block(minibatches(order, B, drop_last=True), 0, steps_per_epoch)):
            loss_sum += trainer.step(ds.X_train[idx], ds.Y_train[idx], lr)
            if args.sync_every and (s + 1) % args.sync_every == 0 and s + 1 < steps_per_epoch:
                average()
        average()  # always at the end of an epoch, so the evaluated model is the shared one
        # the reported training loss is the mean over all ranks' minibatches
        with dog.wait("Allreduce of the epoch's loss"):
            return comm.allreduce(loss_sum / steps_per_epoch) / size, {"syncs": syncs}

    return _epochs(args, comm, dog, ds, trainer, resumed, train_epoch)


# Message tags of the parameter server protocol
_PUSH, _EPOCH, _DONE, _PARAMS = 1, 2, 3, 4


def train_async(args, comm, dog):
    ds, trainer, flat, _ = _setup(args, comm)
    if comm.rank == 0:
        return _server(args, comm, ds, trainer, flat), trainer
    _worker(args, comm, dog, ds, trainer, flat)
    return [], trainer


def _worker(args, comm, dog, ds, trainer, flat):
    B = args.batch_size
    shard = np.array_split(np.arange(len(ds.X_train)), comm.size - 1)[comm.rank - 1]
    if len(shard) < B:
        raise SystemExit(f"error: a worker's shard has {len(shard)} examples, fewer than --batch-size {B}")
    steps = len(shard) // B
    k = args.sync_every or steps  # 0 = push once per epoch
    base, now = flat.pack(trainer.params, flat.empty()), flat.empty()  # v as last pulled; what is pushed
    # header: (version pulled, steps since the last push, epoch)
    version, header, usage = np.zeros(1, dtype=np.int64), np.zeros(3, dtype=np.int64), Usage()
    for epoch in range(args.epochs):
        lr = lr_at(args.lr, args.lr_decay, epoch)
        usage.mark()
        t0, loss_sum = time.perf_counter(), 0.0
        order = shard[epoch_order(len(shard), epoch, args.seed + 1000 * comm.rank)]
        for s, idx in enumerate(minibatches(order, B, drop_last=True)):
            loss_sum += trainer.step(ds.X_train[idx], ds.Y_train[idx], lr)
            if (s + 1) % k == 0 or s + 1 == steps:  # pushes come every k steps, so s % k + 1 steps since the last
                flat.pack(trainer.params, now)
                if args.async_rule != "replace":
                    now -= base  # the update: what this worker's steps changed
                header[:] = (version[0], s % k + 1, epoch)
                with dog.wait("the parameter server's reply"):
                    comm.Send(header, dest=0, tag=_PUSH)
                    comm.Send(now, dest=0, tag=_PUSH)
                    comm.Recv(version, source=0, tag=_PARAMS)
                    comm.Recv(base, source=0, tag=_PARAMS)
                trainer.params = flat.views(base)
        comm.send({"rank": comm.rank, "epoch": epoch, "train_loss_sum": loss_sum, "steps": steps,
                   "worker_epoch_s": time.perf_counter() - t0, **usage.read()}, dest=0, tag=_EPOCH)
    comm.send(None, dest=0, tag=_DONE)


def _server(args, comm, ds, trainer, flat):
    from mpi4py import MPI

    workers, v, delta = comm.size - 1, flat.pack(trainer.params, flat.empty()), flat.empty()
    header, version, status = np.zeros(3, dtype=np.int64), np.zeros(1, dtype=np.int64), MPI.Status()
    reports: dict[int, list] = {}  # epoch -> worker stats received so far
    staleness: dict[int, list] = {}  # epoch -> staleness of every update applied for it
    last_heard = {r: time.monotonic() for r in range(1, comm.size)}  # the workers not done yet
    usage, rows = Usage(), []
    t_start = t_epoch = time.perf_counter()
    while last_heard:
        # Poll instead of a blocking receive: a blocking MPI receive spins a core at 100%, which on an
        # oversubscribed machine steals it from the workers; polling also gives the watchdog its hook.
        if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            silent = min(last_heard, key=last_heard.get)
            if time.monotonic() - last_heard[silent] > args.timeout:
                abort(comm, f"parameter server: worker rank {silent} sent nothing for {args.timeout:g} s; "
                            f"it has probably died or hung")
            time.sleep(0.0002)
            continue
        src, tag = status.Get_source(), status.Get_tag()
        last_heard[src] = time.monotonic()
        if tag == _PUSH:
            comm.Recv(header, source=src, tag=_PUSH)
            comm.Recv(delta, source=src, tag=_PUSH)
            stale = int(version[0] - header[0])
            take_push(v, delta, stale, args.async_rule)  # in arrival order: no barrier, no averaging
            staleness.setdefault(int(header[2]), []).append(stale)
            version[0] += 1
            comm.Send(version, dest=src, tag=_PARAMS)
            comm.Send(v, dest=src, tag=_PARAMS)
        elif tag == _EPOCH:
            stats = comm.recv(source=src, tag=_EPOCH)
            epoch = stats["epoch"]
            reports.setdefault(epoch, []).append(stats)
            if len(reports[epoch]) == workers:  # every worker has finished this epoch: evaluate v now
                now = time.perf_counter()
                trainer.params = flat.views(v)
                rows += _server_epoch(args, ds, trainer, epoch, reports[epoch], staleness.get(epoch, []),
                                      int(version[0]), usage, now - t_epoch, now - t_start)
                t_epoch = now
        elif tag == _DONE:
            comm.recv(source=src, tag=_DONE)
            last_heard.pop(src)
    trainer.params = flat.views(v)
    return rows


def _server_epoch(args, ds, trainer, epoch, reports, staleness, version, usage, seconds, elapsed) -> list[dict]:
    """The parameter server's rows for an epoch every worker has finished: v evaluated, the updates it took
    and their staleness, and every rank's usage."""
    loss = sum(r["train_loss_sum"] for r in reports) / sum(r["steps"] for r in reports)
    st = np.array(staleness or [0])
    shared = {**_summary(trainer, ds, epoch, lr_at(args.lr, args.lr_decay, epoch), loss, seconds, elapsed),
              "updates": len(staleness), "staleness_mean": float(st.mean()), "staleness_max": int(st.max()),
              "version": version}
    return [{**shared, "rank": 0, **usage.read()}] + [
        {**shared, **{k: r[k] for k in ("rank", "cpu_percent", "rss_mib", "peak_rss_mib")}}
        for r in sorted(reports, key=lambda r: r["rank"])]


def take_push(v, pushed, staleness: int, rule: str) -> None:
    """The server takes one worker's push into v, in place, by ``TAKE_PUSH[rule]``."""
    check_choice("async rule", rule, ASYNC_RULES, unknown=True)
    TAKE_PUSH[rule](v, pushed, staleness)


def loss_option(loss: str) -> dict:
    """The trainer option for a loss other than the study's MSE (only the numpy trainer has another)."""
    return {} if loss == "mse" else {"loss": loss}


def _summary(trainer, ds, epoch, lr, train_loss, seconds, elapsed) -> dict:
    """The history row rank 0 records for ``epoch`` (evaluation is not counted in the epoch time)."""
    return history_row(epoch + 1, train_loss, *evaluate(trainer, ds.X_val, ds.Y_val, ds.y_val), seconds,
                       lr=lr, elapsed_s=elapsed)


TRAIN = {"allreduce": train_allreduce, "average": train_average, "async": train_async}


# ---- Command line ----------------------------------------------------------------------------------------


class RankZeroParser(Parser):
    """Every rank checks the command line and exits 2; only rank 0 says why, once."""

    def error(self, message):
        # the rank as mpiexec announced it: MPI is not initialized yet (none outside mpiexec: rank 0)
        ranks = (os.environ.get(var, "") for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"))
        rank = next((int(r) for r in ranks if r.isdigit()), 0)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n" if rank == 0 else None)


def parser() -> argparse.ArgumentParser:
    p = RankZeroParser(prog="mpiexec -n N python -m parbp.mpi", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", required=True, choices=MODES)
    data_arguments(p, net="1h", batch_size=10, batch_help="global minibatch (default 10, the paper's)")
    p.add_argument("--epochs", type=positive_int, default=5)
    p.add_argument("--lr", type=positive_float, default=0.05,
                   help="learning rate (default 0.05: serial SGD's 0.1 saturates async's stale updates on MNIST, "
                        "seed 003's 1.0 the sigmoid + MSE outputs in every mode: val loss 1.0, chance accuracy)")
    p.add_argument("--lr-decay", type=fraction, default=0.01, help="fraction the lr shrinks after each epoch")
    p.add_argument("--sync-every", type=nonnegative_int, default=1,
                   help="average/async: local SGD steps between exchanges (0 = once per epoch)")
    p.add_argument("--async-rule", default="delta", choices=ASYNC_RULES,
                   help="async: how the server takes a push: add the change (delta), add it divided by the "
                        "staleness (staleness), or set v to the worker's parameters (replace)")
    p.add_argument("--whole-data", action="store_true",
                   help="average: every rank passes over the whole training set, not its shard")
    p.add_argument("--loss", default="mse", choices=("mse", "xent"),
                   help="the study's sigmoid + MSE, or softmax + cross-entropy (needs --impl numpy)")
    p.add_argument("--impl", default=None, choices=trainers.names(),
                   help="per-rank trainer (default serial-blas if available, else numpy)")
    p.add_argument("--threads", type=positive_int, default=1, help="BLAS threads per rank")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=positive_float, default=20.0,
                   help="seconds a blocking exchange may wait (and, for the parameter server, a worker may stay "
                        "silent) before the job is aborted; raise it for long epochs with --sync-every 0")
    p.add_argument("--out", default=None, help="CSV written by rank 0 (atomically)")
    p.add_argument("--params-out", default=None, help="rank 0 saves the final network here (parbp.checkpoint)")
    p.add_argument("--checkpoint", default=None,
                   help="allreduce/average: rank 0 saves the run's state here after every epoch (atomically)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint (same command, same -n); without it, an existing one is refused")
    return p


def parse_args(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.mode != "async" and args.async_rule != "delta":
        p.error("--async-rule applies to --mode async only")
    if args.mode != "average" and args.whole_data:
        p.error("--whole-data applies to --mode average only")
    if args.loss != "mse" and args.impl != "numpy":
        p.error("--loss xent needs --impl numpy")
    if args.mode == "async" and args.checkpoint:
        p.error("--checkpoint works with --mode allreduce and average, not async: when the parameter server closes "
                "an epoch the workers are already into the next one, so there is no consistent state to save")
    args.impl = args.impl or trainers.fastest_cpu(threaded=False)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from mpi4py import MPI
    from threadpoolctl import threadpool_limits

    comm = MPI.COMM_WORLD
    # Every rank checks the same arguments, so they all stop together before any communication.
    if args.mode == "allreduce" and comm.size > args.batch_size:
        return refuse(comm, f"{comm.size} processes but --batch-size {args.batch_size}: allreduce splits each "
                            f"minibatch across the ranks, so -n must be <= the batch size")
    if args.mode == "async" and comm.size < 2:
        return refuse(comm, "--mode async needs at least 2 processes (rank 0 is the parameter server)")
    dog = Watchdog(comm, args.timeout)
    try:
        with threadpool_limits(args.threads):
            rows, trainer = TRAIN[args.mode](args, comm, dog)
    except Refused as e:  # raised on every rank together
        return refuse(comm, e)
    if comm.rank == 0:
        import pandas as pd

        from .results import write_csv

        meta = {"mode": args.mode, "processes": comm.size,
                "net": args.net if isinstance(args.net, str) else "-".join(map(str, args.net)), "dataset": args.dataset,
                "batch_size": args.batch_size, "impl": args.impl, "sync_every": args.sync_every, "seed": args.seed,
                "async_rule": args.async_rule, "whole_data": args.whole_data, "loss": args.loss}
        df = leading(pd.DataFrame(rows), meta)
        if args.out:
            write_csv(df, args.out)
        if args.params_out:
            checkpoint.save_params(args.params_out, trainer.params, meta)
        last = df[df["rank"] == 0].iloc[-1]
        print(f"{args.mode} x{comm.size}: {args.epochs} epochs in {last.elapsed_s:.2f} s, "
              f"val loss {last.val_loss:.4f}, val acc {last.val_acc:.4f}", flush=True)
    return 0


def run(mode: str, processes: int, timeout: float = 600, out=None, watchdog: float | None = None, **options):
    """``mpiexec -n processes python -m parbp.mpi --mode mode ...``'s CSV as a DataFrame (``distributed.run_job``);
    ``options`` become flags (``distributed.flags``), ``watchdog`` is the job's own ``--timeout``."""
    check_choice("mode", mode, MODES, unknown=True)
    return run_job("parbp.mpi", processes, ["--mode", mode, *flags({**options, "timeout": watchdog})], timeout, out)


if __name__ == "__main__":
    from .cli import run as _run

    sys.exit(_run(main, prog="parbp.mpi"))
