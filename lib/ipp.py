"""Data and model parallelism on ipyparallel engines that form one MPI world (seed 004).

    with Engines(n=2) as eng:                        # ipp.Cluster(engines="mpi", n=2): ranks 0..n-1 of one world
        dp = DataParallel(eng, ds, net="2h")         # shards on the engines, one Allreduce per step
        mp = ModelParallel(eng, ds, net="2h", schedule="1f1b", micro_batches=8)
        history = mp.fit(epochs=2, batch_size=1000, lr=0.1)

A cluster you started yourself is found by its profile and only connected to (it keeps running when closed):

    PATH=$PWD/.venv/bin:$PATH ipcluster start --engines=MPI -n 2 --profile=parbp --daemonize
    Engines(n=2, profile="parbp")                             # ... and ipcluster stop --profile=parbp

(ipcluster runs ``mpiexec`` from PATH: the venv's MPICH, the one mpi4py was built against.)

The client never carries a tensor while training. It ships each engine its data and layers once, then
submits coarse pieces of work (an epoch, or a block of steps) and collects metrics; the engines exchange
tensors with mpi4py:

  data parallel   each engine holds a shard of the training set and a replica of the network, computes
                  the gradient of its slice of every minibatch with the best single-core trainer, and joins
                  one Allreduce of one packed buffer: ``parbp.distributed.allreduce_step``, the same code as
                  ``mpiexec python -m parbp.mpi --mode allreduce``.
  model parallel  consecutive layers per engine (``parbp.pipeline``: split to balance FLOPs, schedules
                  plain / GPipe / 1F1B); activations go forward and deltas backward point to point, sent
                  with Isend so a stage computes its next task while its message travels.

Faults: every MPI wait on an engine has a deadline (``timeout``): a rank whose peer died or stopped raises
instead of blocking forever. The client polls its results and the engine processes, and raises
``EngineFailure`` naming the engine within a few seconds (one on another machine that the hub stops hearing
"stopped answering": from here a dead engine and a stopped one look the same); the MPI world is then broken,
and ``Engines`` says so if used again (start new ones).
"""
from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import itertools
import logging
import os
import re
import socket
import time

import numpy as np
import pandas as pd

from . import pipeline, trainers
from .base import Closing
from .distributed import PackedGradients, allreduce_step, block, epoch_batches, epoch_order, mpiexec
from .train import HISTORY, evaluate, history_row, lr_at


class EngineFailure(RuntimeError):
    """An engine died, raised, or did not answer in time; the message says which and what it was doing."""


class PeerTimeout(RuntimeError):
    """Raised on an engine whose MPI wait passed its deadline: a peer has died or stopped."""


# ---- The engines (client side) ---------------------------------------------------------------------------


class Engines(Closing):
    """``n`` ipyparallel engines forming one MPI world: started here with ``ipp.Cluster(engines="mpi")``,
    or those of a running cluster found through ``profile``. Each engine pins its BLAS to one thread.

    ``timeout`` bounds every MPI wait on the engines and every client wait that is not a training piece;
    ``mpi=False`` starts plain engines (enough for ``parbp.ipp_relay``, which does not use MPI)."""

    def __init__(self, n: int = 2, profile: str | None = None, timeout: float = 10.0, start_timeout: float = 120.0,
                 mpi: bool = True):
        import ipyparallel as ipp

        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"need at least 1 engine, got n={n!r}")
        self.n, self.timeout, self.mpi, self.cluster, self.broken = int(n), timeout, mpi, None, None
        if profile is None:
            from traitlets.config import Config

            config = Config()
            config.MPIEngineSetLauncher.mpi_cmd = [mpiexec()]  # the venv's MPICH, whatever PATH says
            # ERROR: stopping engines makes them exit non-zero, and the launcher would dump their logs as warnings
            self.cluster = ipp.Cluster(n=self.n, engines="mpi" if mpi else "local", log_level=logging.ERROR,
                                       config=config)
            self.rc = self.cluster.start_and_connect_sync()
        else:
            self.rc = ipp.Client(profile=profile)
        try:
            self.rc.wait_for_engines(self.n, timeout=start_timeout)
        except TimeoutError:
            self.close()
            raise EngineFailure(f"only {len(self.rc.ids)} of {n} engines came up within {start_timeout:g} s") from None
        ids = sorted(self.rc.ids)[:self.n]
        self.ids, self.pids, self.local = ids, [], []
        info = self._wait([self.submit(e, _engine_init, timeout, mpi) for e in ids], "starting up", self.timeout + 20)
        if not mpi:  # no ranks: number the engines in id order
            info = [{**i, "rank": r} for r, i in enumerate(info)]
        self.rank_of = {e: i["rank"] for e, i in zip(ids, info)}
        by_rank = sorted(info, key=lambda i: i["rank"])
        if mpi:
            sizes = {i["size"] for i in info}
            if sizes != {self.n} or sorted(self.rank_of.values()) != list(range(self.n)):
                self.close()
                raise EngineFailure(f"the {self.n} engines are not one MPI world of {self.n} ranks (MPI sizes {sorted(sizes)}); "
                                    f"start them with: ipcluster start --engines=MPI -n {self.n} --profile=NAME")
        self.ids = sorted(ids, key=self.rank_of.get)  # self.ids[r] is the engine of MPI rank r
        self.pids, self.local = [i["pid"] for i in by_rank], [i["host"] == socket.gethostname() for i in by_rank]

    # -- submitting and waiting ---------------------------------------------------------------
    def submit(self, engine: int, fn, *args):
        ar = self.rc[engine].apply_async(fn, *args)
        ar.parbp_engine = engine  # for error messages: which engine this result is waiting on
        return ar

    def run(self, calls, what: str, deadline: float | None = None):
        """Submit ``calls`` ([(engine, fn, args), ...]) at once, return their values in order. Raises
        EngineFailure when an engine fails, dies, is stopped, or (``deadline`` seconds) does not answer."""
        if self.broken:
            raise EngineFailure(f"these engines are unusable after an earlier failure ({self.broken}); "
                                f"close them and start new Engines")
        return self._wait([self.submit(e, fn, *args) for e, fn, args in calls], what, deadline)

    def get(self, results, what: str):
        """The values of already submitted ``results``, within ``timeout`` seconds (parbp.ipp_relay)."""
        return self._wait(results, what, self.timeout)

    def _wait(self, results, what, deadline):
        t_end = None if deadline is None else time.monotonic() + deadline
        first_done = None
        while True:
            done, pending = concurrent.futures.wait(results, timeout=0.2, return_when=concurrent.futures.FIRST_EXCEPTION)
            failed = [r for r in done if r.exception() is not None]
            if failed:
                self._fail(failed, [r for r in results if not r.done()], what)
            if not pending:
                return [r.get(0) for r in results]
            gone = self._lost_engines()
            if gone:
                self._break(f"{gone} while {what}")
            # the ranks of a block finish within an MPI deadline of each other; one that lags its peers longer
            # stopped after its last message, where no peer waits on it and only the hub's heartbeat would tell
            first_done = first_done or (time.monotonic() if done else None)
            if first_done is not None and time.monotonic() - first_done > 2 * self.timeout:
                self._break(f"engine(s) {sorted({r.parbp_engine for r in pending})} stopped answering: no answer "
                            f"while {what} {2 * self.timeout:g} s after the other engines finished")
            if t_end is not None and time.monotonic() > t_end:
                self._break(f"engine(s) {sorted({r.parbp_engine for r in pending})} stopped answering: "
                            f"no answer while {what} within {deadline:g} s")

    def _lost_engines(self) -> str:
        """'engine(s) [..] died' / 'stopped' from the engine processes we can see, '' if all look alive."""
        import psutil

        status = {}
        for e, pid, local in zip(self.ids, self.pids, self.local):
            try:
                status[e] = psutil.Process(pid).status() if local else None
            except psutil.NoSuchProcess:
                status[e] = psutil.STATUS_DEAD
        dead = [e for e, s in status.items() if s in (psutil.STATUS_DEAD, psutil.STATUS_ZOMBIE)]
        stopped = [e for e, s in status.items() if s == psutil.STATUS_STOPPED]
        first = self._first_dead() if len(dead) > 1 else None
        if first is not None:
            return f"engine {first} died (MPI rank {self.rank_of[first]}; mpiexec then ended the others: {dead})"
        return " and ".join(filter(None, [f"engine(s) {dead} died" if dead else "",
                                          f"engine(s) {stopped} stopped answering (the process is stopped)" if stopped else ""]))

    def _first_dead(self):
        """mpiexec ends the whole world when one rank dies: the log of our own cluster says which one it was."""
        try:
            out = "".join(es.get_output() or "" for es in self.cluster.engines.values())
        except Exception:  # no cluster of ours, or no log: a convenience that must never hide the failure itself
            return None
        pids = [int(pid) for pid in re.findall(r"PID (\d+) RUNNING AT", out) if int(pid) in self.pids]
        return self.ids[self.pids.index(pids[0])] if pids else None

    def _fail(self, failed, pending, what):
        r = failed[0]
        err = r.exception()
        ename = getattr(err, "ename", type(err).__name__)
        message = getattr(err, "evalue", str(err))
        gone = self._lost_engines()  # what the client sees of the engine processes, where it sees them
        if ename == "PeerTimeout":
            # the rank that timed out is a victim; the culprits are the ranks that are still busy (or named)
            culprits = sorted({p.parbp_engine for p in pending})
            if not culprits:
                m = re.search(r"rank (\d+)", message)
                culprits = [self.ids[int(m.group(1))]] if m and int(m.group(1)) < len(self.ids) else []
            who = gone or f"engine(s) {culprits} stopped answering"
            self._break(f"{who} while {what}: engine {r.parbp_engine} reports {message}")
        if ename in ("EngineError", "CompositeError") or "died" in message or "unregistered" in message:
            # the hub lost its heartbeat; from another machine a stopped engine and a dead one look the same
            remote = dict(zip(self.ids, self.local)).get(r.parbp_engine) is False
            who = gone or (f"engine {r.parbp_engine} stopped answering (the hub lost its heartbeat: it died or is "
                           f"stopped)" if remote else f"engine {r.parbp_engine} died")
            self._break(f"{who} while {what}: {ename}: {message}")
        if self.mpi and len(self.ids) > 1:
            self.broken = f"engine {r.parbp_engine} raised {ename} while {what}"  # its peers may wait on it now
        raise EngineFailure(f"engine {r.parbp_engine} failed while {what}: {ename}: {message}") from err

    def _break(self, message):
        self.broken = message
        raise EngineFailure(message)

    # -- lifetime -----------------------------------------------------------------------------
    def close(self):
        if self.cluster is not None:
            try:
                self.cluster.stop_cluster_sync()  # ours: stop it
            except Exception:  # engines that were killed make the launcher's stop complain; they are gone either way
                pass
        else:
            self.rc.close()  # somebody else's: just disconnect



# ---- Engine side: state, MPI with deadlines -------------------------------------------------------------
# The engines import this module, so functions travel by reference; every model object keeps its state under
# its own key, so several can share the same engines.

_state: dict = {}  # also parbp.ipp_relay's
_keys = itertools.count()


def _engine_init(timeout, mpi: bool):
    from threadpoolctl import threadpool_limits

    _state.clear()
    _state["blas"] = threadpool_limits(1)  # kept alive: the limit holds for the engine's lifetime
    rank, size = 0, 1
    if mpi:  # ipyparallel's MPI engines have initialized MPI already
        from mpi4py import MPI

        _state["comm"] = BoundedComm(MPI.COMM_WORLD, timeout)
        rank, size = MPI.COMM_WORLD.rank, MPI.COMM_WORLD.size
    return {"rank": rank, "size": size, "pid": os.getpid(), "host": socket.gethostname()}


def _comm() -> "BoundedComm":
    if "comm" not in _state:
        raise RuntimeError("this engine is not part of an MPI world; start the engines with ipp.Cluster(engines='mpi') "
                           "or ipcluster start --engines=MPI")
    return _state["comm"]


class BoundedComm:
    """An MPI communicator whose every wait has a deadline: non-blocking calls polled with ``Test``.

    It also stands in for ``parbp.mpi``'s communicator and watchdog in ``allreduce_step`` (``Allreduce``
    and ``wait(what)``), so the data-parallel step is that function, unchanged."""

    def __init__(self, comm, timeout: float):
        self.comm, self.timeout, self.rank, self.size = comm, timeout, comm.rank, comm.size
        self._what = "an MPI exchange"

    def complete(self, request, what: str, peer: int | None = None):
        """Wait for ``request`` by polling ``Test`` (which is also what moves a non-blocking collective
        along), yielding the core between polls so that a waiting rank does not starve the rank it waits
        for when ranks outnumber cores, and raise PeerTimeout at the deadline."""
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            os.sched_yield()
            if time.monotonic() > deadline:
                if peer is not None:  # a receive can be cancelled (collectives cannot)
                    request.Cancel()
                from_whom = f"rank {peer}" if peer is not None else "its peers"
                raise PeerTimeout(f"rank {self.rank}: {what} got nothing from {from_whom} for {self.timeout:g} s")

    # the two calls parbp.mpi.allreduce_step makes
    def wait(self, what: str):
        self._what = what
        return contextlib.nullcontext()

    def Allreduce(self, sendbuf, recvbuf):
        self.complete(self.comm.Iallreduce(sendbuf, recvbuf), self._what)

    def Isend(self, buf, dest, tag):
        return self.comm.Isend(buf, dest=dest, tag=tag)

    def recv(self, buf, source, tag, what):
        self.complete(self.comm.Irecv(buf, source=source, tag=tag), what, peer=source)
        return buf

    def barrier(self, what):
        self.complete(self.comm.Ibarrier(), what)


# ---- What every model on engines offers, and the training loop they share --------------------------------


class EngineModel(abc.ABC):
    """A network trained on engines (here and in ``parbp.ipp_relay``) or, as the baseline, in this process.

    It has a ``name``, ``workers`` (engines used), ``ds`` and ``eval`` (a trainer on the client that
    evaluates what was learned); it runs steps of an epoch (``run_steps``) and hands back its ``params``.
    ``fit`` is the one training loop over all of them."""

    name: str
    workers: int

    @abc.abstractmethod
    def run_steps(self, epoch: int, B: int, lr: float, first: int = 0, count: int | None = None) -> dict:
        """Steps ``first`` .. ``first + count`` of the epoch's minibatches: train_loss, seconds, steps, ..."""

    @property
    @abc.abstractmethod
    def params(self) -> list:
        """The current [(W, b), ...], gathered on the client."""

    def train_epoch(self, epoch: int, B: int, lr: float) -> dict:
        return self.run_steps(epoch, B, lr)

    def place(self, engines: "Engines", ds, net, seed: int, mpi: bool = True) -> None:
        """Train on ``engines`` (MPI ones unless ``mpi`` is False) under a key of its own; the client's trainer
        (``eval``) gives the starting parameters and evaluates what the engines learned."""
        if mpi and not engines.mpi:
            raise ValueError(f"{type(self).__name__} needs MPI engines (Engines(mpi=True)); without MPI, "
                             f"parbp.ipp_relay trains data or model parallel")
        self.eng, self.ds, self.seed, self.key, self.workers = engines, ds, seed, next(_keys), len(engines.ids)
        self.eval = trainers.get("numpy")(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=seed)

    def on_engines(self, fn, *args, what: str, deadline: float | None = None) -> list:
        """``fn(key, *args)`` on every engine, their answers in rank order."""
        return self.eng.run([(e, fn, (self.key, *args)) for e in self.eng.ids], what, deadline)

    def run_block(self, fn, *args) -> tuple[list[dict], dict]:
        """A block of steps, ``fn(key, *args)`` on every engine (``timed_block``): each engine's answer, and the
        block's seconds (the slowest engine's), steps and CPU share."""
        out = self.on_engines(fn, *args, what=f"training ({self.name})")
        return out, {"seconds": max(o["seconds"] for o in out), "steps": out[0]["steps"], "cpu_share": cpu_share(out)}

    def evaluate(self) -> tuple[float, float]:
        """The client's copy of the parameters on the validation split: (loss, accuracy)."""
        return evaluate(self.eval, self.ds.X_val, self.ds.Y_val, self.ds.y_val)

    def check_batch(self, B: int) -> None:
        """Refuse a minibatch this model cannot split, before any engine is asked."""
        if B < self.workers:
            raise ValueError(f"batch_size {B} is smaller than the {self.workers} engines")

    def fit(self, epochs: int, batch_size: int, lr: float, lr_decay: float = 0.0) -> pd.DataFrame:
        """Train and return one row per epoch (row 0: the untrained network, so every curve starts at the
        same point): losses, validation accuracy, training seconds and examples per second."""
        self.check_batch(batch_size)
        who = {"method": self.name, "engines": self.workers}
        rows = [history_row(0, float("nan"), *self.evaluate(), 0.0, **who)]
        for epoch in range(epochs):
            r = self.train_epoch(epoch, batch_size, lr_at(lr, lr_decay, epoch))
            self.eval.params = self.params
            rows.append(history_row(epoch + 1, r["train_loss"], *self.evaluate(), r["seconds"], **who,
                                    **{k: v for k, v in r.items() if k not in HISTORY},
                                    examples_per_s=r["steps"] * batch_size / r["seconds"]))
        return pd.DataFrame(rows)


def timed_block(comm, steps) -> dict:
    """Engine side: ``steps()`` (a block of steps; it returns their metrics) from a common start, with the
    block's wall and CPU seconds."""
    comm.barrier("the start of a block of steps")
    t0, c0 = time.perf_counter(), time.process_time()
    out = steps()
    return {"rank": comm.rank, **out, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


# ---- Data parallel: shards on the engines, one Allreduce per step ----------------------------------------


def shard_batches(shard_sizes, rank: int, epoch: int, batch_size: int, seed: int):
    """Rank ``rank``'s local row indices, step by step: it takes its share of every B-example minibatch
    from its own shuffled shard. Every rank takes the same number of steps."""
    share = [len(a) for a in np.array_split(np.arange(batch_size), len(shard_sizes))]
    steps = min(n // b for n, b in zip(shard_sizes, share))
    order, b = epoch_order(shard_sizes[rank], epoch, seed + 1000 * rank), share[rank]
    return (order[k * b:(k + 1) * b] for k in range(steps))


class Sharded:
    """The training set split into one contiguous shard per engine (``shards``), each drawn in its own order."""

    def shard(self, impl, net) -> None:
        """Send every engine its shard and a trainer (``_dp_setup``)."""
        ds = self.ds
        self.shards = np.array_split(np.arange(len(ds.X_train)), self.workers)
        sizes = [len(s) for s in self.shards]
        self.eng.run([(e, _dp_setup, (self.key, impl, net, ds.n_in, ds.n_out, self.seed, ds.X_train[s], ds.Y_train[s], sizes))
                      for e, s in zip(self.eng.ids, self.shards)], "receiving its shard", self.eng.timeout + 60)

    @property
    def params(self):
        return self.eng.run([(self.eng.ids[0], _dp_params, (self.key,))], "sending its parameters", self.eng.timeout)[0]

    def batches(self, epoch: int, B: int):
        """Per step, every rank's local row indices (``self.shards[r][local]`` are the global rows, for checks)."""
        sizes = [len(s) for s in self.shards]
        return zip(*[shard_batches(sizes, r, epoch, B, self.seed) for r in range(self.workers)])


def _dp_setup(key, impl, net, n_in, n_out, seed, X, Y, shard_sizes):
    t = trainers.get(impl)(net=net, n_in=n_in, n_out=n_out, seed=seed)
    _state[key] = dict(trainer=t, packed=PackedGradients(t), X=X, Y=Y, shard_sizes=shard_sizes, seed=seed)
    t.gradients(X[:2], Y[:2])  # warm-up (numba kernels compile here), not timed
    return len(X)


def _dp_run(key, epoch, batch_size, lr, first, count):
    """Steps ``first`` .. ``first + count - 1`` of an epoch (count None: to its end). Returns metrics only."""
    st, comm = _state[key], _comm()
    t, X, Y = st["trainer"], st["X"], st["Y"]
    steps = block(shard_batches(st["shard_sizes"], comm.rank, epoch, batch_size, st["seed"]), first, count)

    def run():
        losses = [allreduce_step(t, st["packed"], X[idx], Y[idx], batch_size, lr, comm, comm) for idx in steps]
        return {"steps": len(losses), "loss_sum": float(np.sum(losses))}

    return timed_block(comm, run)


def _dp_params(key):
    return _state[key]["trainer"].params


class DataParallel(Sharded, EngineModel):
    """Synchronous data-parallel SGD on MPI engines: shards, partial gradients, one Allreduce per step."""

    name = "data parallel"

    def __init__(self, engines: Engines, ds, net="2h", impl: str | None = None, seed: int = 0):
        self.place(engines, ds, net, seed)
        self.impl = impl or trainers.fastest_cpu(threaded=False)
        self.shard(self.impl, net)

    def run_steps(self, epoch, B, lr, first=0, count=None) -> dict:
        self.check_batch(B)
        out, block_ = self.run_block(_dp_run, epoch, B, lr, first, count)
        return {"train_loss": out[0]["loss_sum"] / max(out[0]["steps"], 1), **block_}


# ---- Model parallel: consecutive layers per engine, point to point, plain / GPipe / 1F1B -----------------

_FORWARD, _BACKWARD = 0, 1


def _tag(kind: int, j: int) -> int:
    return 2 * j + kind


def _mp_setup(key, params, layers, sizes, stages, schedule, m, X, Y, n_train, seed):
    comm = _comm()
    s = comm.rank
    _state[key] = dict(stage=pipeline.Stage(params, first=s == 0, last=s == stages - 1), layers=layers, sizes=sizes,
                       p=stages, m=m, X=X, Y=Y, n=n_train, seed=seed,
                       tasks=pipeline.stage_tasks(schedule, stages, m, s))
    # warm-up: compile the numba kernels before anything is timed
    st = _state[key]["stage"]
    acts = st.forward(np.zeros((2, sizes[layers[0]]), np.float32))
    st.backward(acts, np.zeros((2, sizes[layers[-1] + 1]), np.float32))
    st.fresh = True  # forget the warm-up's gradient
    return s


def _mp_step(key, comm, idx, B, lr):
    """One minibatch on this stage: its tasks in schedule order, messages to and from the neighbours.
    Returns (sse of the minibatch or 0, busy intervals [(kind, j, start, end)], peak stash bytes, peak count)."""
    S = _state[key]
    st, p, m, s, sizes, layers = S["stage"], S["p"], S["m"], comm.rank, S["sizes"], S["layers"]
    micro = np.array_split(idx, m)
    acts, sends, busy = {}, [], []
    sse, stash, peak, peak_n = 0.0, 0, 0, 0
    width_in, width_out = sizes[layers[0]], sizes[layers[-1] + 1]
    for kind, j in S["tasks"]:
        rows = micro[j]
        if kind == "F":
            if s == 0:
                x = S["X"][rows]
            else:
                x = comm.recv(np.empty((len(rows), width_in), np.float32), s - 1, _tag(_FORWARD, j),
                              f"receiving the activations of micro-batch {j} from stage {s - 1}")
            t0 = time.perf_counter()
            a = st.forward(x)
            if s < p - 1:
                sends.append((comm.Isend(a[-1], s + 1, _tag(_FORWARD, j)), a[-1]))
            acts[j] = a
            stash += sum(v.nbytes for v in a)
            peak, peak_n = max(peak, stash), max(peak_n, len(acts))
            busy.append(("F", j, t0, time.perf_counter()))
        else:
            if s == p - 1:
                t0 = time.perf_counter()
                e, delta = st.output_delta(acts[j][-1], S["Y"][rows], B)
                sse += e
            else:
                g = comm.recv(np.empty((len(rows), width_out), np.float32), s + 1, _tag(_BACKWARD, j),
                              f"receiving the deltas of micro-batch {j} from stage {s + 1}")
                t0 = time.perf_counter()
                delta = st.input_delta(g, acts[j][-1])
            below = st.backward(acts[j], delta)
            a = acts.pop(j)
            stash -= sum(v.nbytes for v in a)
            if below is not None:
                sends.append((comm.Isend(below, s - 1, _tag(_BACKWARD, j)), below))
            busy.append(("B", j, t0, time.perf_counter()))
        sends = [(r, b) for r, b in sends if not r.Test()]  # let finished sends go
    for r, _ in sends:
        comm.complete(r, "sending to a neighbouring stage")
    t0 = time.perf_counter()
    st.update(lr)
    busy.append(("U", -1, t0, time.perf_counter()))
    return sse, busy, peak, peak_n


def _mp_run(key, epoch, batch_size, lr, first, count, keep_intervals):
    """Steps ``first`` .. ``first + count - 1`` of an epoch on this stage; metrics and busy intervals only."""
    S, comm = _state[key], _comm()
    batches = block(epoch_batches(S["n"], epoch, S["seed"], batch_size), first, count)

    def run():
        sse, steps, busy, peak, peak_n = 0.0, 0, [], 0, 0
        for idx in batches:
            e, b, pk, pn = _mp_step(key, comm, idx, batch_size, lr)
            sse, steps, peak, peak_n = sse + e, steps + 1, max(peak, pk), max(peak_n, pn)
            if keep_intervals:
                busy.append(b)
        return {"steps": steps, "loss_sum": sse / batch_size, "busy": busy, "peak_stash_bytes": peak,
                "peak_stash_micro_batches": peak_n}

    return timed_block(comm, run)


def _mp_params(key):
    return _state[key]["stage"].params


class Staged:
    """Layers split over the engines, a ``pipeline.Stage`` each (``_state[key]["stage"]``)."""

    @property
    def params(self):
        return [wb for stage in self.on_engines(_mp_params, what="sending its layers", deadline=self.eng.timeout)
                for wb in stage]


class ModelParallel(Staged, EngineModel):
    """The network's layers split over the MPI engines, run with ``schedule`` on ``micro_batches`` per minibatch.

    ``schedule``: "plain" (one micro-batch), "gpipe" or "1f1b" (``parbp.pipeline``). Every schedule sums the
    micro-batch gradients and updates once per minibatch: the serial algorithm, on ``minibatches``' order."""

    def __init__(self, engines: Engines, ds, net="2h", schedule: str = "1f1b", micro_batches: int = 1, seed: int = 0):
        pipeline.check_schedule(schedule, micro_batches)
        self.place(engines, ds, net, seed)
        self.schedule, self.m, self.sizes, p = schedule, int(micro_batches), self.eval.sizes, self.workers
        self.stages = pipeline.split_layers(self.sizes, p)  # raises: more stages than layers
        self.name = "model parallel" if schedule == "plain" else f"{'GPipe' if schedule == 'gpipe' else '1F1B'} m={self.m}"
        params = self.eval.params
        engines.run([(e, _mp_setup, (self.key, [params[l] for l in layers], layers, self.sizes, p, schedule, self.m,
                                     ds.X_train if s == 0 else None, ds.Y_train if s == p - 1 else None, len(ds.X_train), seed))
                     for s, (e, layers) in enumerate(zip(engines.ids, self.stages))], "receiving its layers",
                    engines.timeout + 60)
        self.steps: list[dict] = []  # per step: measured and predicted idle fraction, per-stage task times

    def check_batch(self, B):
        if self.m > B:
            raise ValueError(f"micro_batches={self.m} is larger than the minibatch ({B} examples); choose 1 to {B}")
        super().check_batch(B)

    def run_steps(self, epoch, B, lr, first=0, count=None, intervals=True) -> dict:
        self.check_batch(B)
        out, block_ = self.run_block(_mp_run, epoch, B, lr, first, count, intervals)
        r = {"train_loss": sum(o["loss_sum"] for o in out) / max(out[0]["steps"], 1), **block_,
             "peak_stash_bytes": [o["peak_stash_bytes"] for o in out],
             "peak_stash_micro_batches": [o["peak_stash_micro_batches"] for o in out]}
        if intervals:
            new = [step_timing([o["busy"][k] for o in out], self.schedule, self.m) for k in range(out[0]["steps"])]
            self.steps += new
            if new:
                r["idle_fraction"] = float(np.mean([t["idle_fraction"] for t in new]))
                r["idle_predicted"] = float(np.mean([t["idle_predicted"] for t in new]))
        return r

    def train_epoch(self, epoch, B, lr) -> dict:
        r = self.run_steps(epoch, B, lr)
        r["idle_theory"] = pipeline.bubble_theory(self.workers, self.m)
        r.pop("peak_stash_bytes"), r.pop("peak_stash_micro_batches"), r.pop("cpu_share")
        return r

    def activation_memory(self, B: int) -> pd.DataFrame:
        """Per stage: the formula's peak stash (micro-batches and bytes) for this schedule at minibatch B."""
        self.check_batch(B)
        mb = -(-B // self.m)  # array_split: the largest micro-batch
        return pd.DataFrame([{"stage": s, "micro_batches_formula": pipeline.activations_kept(self.schedule, self.workers, self.m, s),
                              "bytes_formula": pipeline.activations_kept(self.schedule, self.workers, self.m, s)
                              * pipeline.activation_bytes(self.sizes, layers, mb)}
                             for s, layers in enumerate(self.stages)])


def cpu_share(out) -> float:
    """CPU time over wall time of a block, averaged over the engines: about 1 when every engine had a core of
    its own (waiting polls too), well below 1 when other work on the machine took the cores away."""
    return float(np.mean([o["cpu_seconds"] / max(o["seconds"], 1e-9) for o in out]))


def step_timing(busy, schedule: str, m: int) -> dict:
    """One step's measured idle fraction (forward and backward tasks; the update after the flush is left
    out) and the idle fraction ``pipeline.simulate`` predicts for the same schedule from the same step's
    mean task times per stage, with free messages."""
    tasks = [[(a, z) for kind, _, a, z in stage if kind in "FB"] for stage in busy]
    fwd = [float(np.mean([z - a for kind, _, a, z in stage if kind == "F"])) for stage in busy]
    bwd = [float(np.mean([z - a for kind, _, a, z in stage if kind == "B"])) for stage in busy]
    upd = [sum(z - a for kind, _, a, z in stage if kind == "U") for stage in busy]
    predicted = pipeline.simulate(schedule, m, fwd, bwd)["idle_fraction"]
    return {"idle_fraction": pipeline.idle_fraction(tasks), "idle_predicted": predicted,
            "forward_s": fwd, "backward_s": bwd, "update_s": upd,
            "span_s": max(z for t in tasks for _, z in t) - min(a for t in tasks for a, _ in t)}


# ---- The serial baseline ---------------------------------------------------------------------------------


class Serial(EngineModel):
    """The baseline in this process: the best single-core trainer (BLAS on one thread), same ``fit``."""

    name = "serial"

    def __init__(self, ds, net="2h", impl: str | None = None, seed: int = 0):
        self.ds, self.seed, self.impl = ds, seed, impl or trainers.fastest_cpu(threaded=False)
        self.trainer = trainers.get(self.impl)(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=seed)
        self.eval, self.workers = self.trainer, 1
        self.trainer.gradients(ds.X_train[:2], ds.Y_train[:2])  # warm-up (numba kernels compile here)

    def run_steps(self, epoch, B, lr, first=0, count=None) -> dict:
        from threadpoolctl import threadpool_limits

        X, Y = self.ds.X_train, self.ds.Y_train
        batches = block(epoch_batches(len(X), epoch, self.seed, B), first, count)
        t0, c0 = time.perf_counter(), time.process_time()
        with threadpool_limits(1):  # one core, like each engine
            losses = [self.trainer.step(X[idx], Y[idx], lr) for idx in batches]
        seconds = time.perf_counter() - t0
        return {"train_loss": float(np.mean(losses)), "seconds": seconds, "steps": len(losses),
                "cpu_share": (time.process_time() - c0) / max(seconds, 1e-9)}

    @property
    def params(self):
        return self.trainer.params
