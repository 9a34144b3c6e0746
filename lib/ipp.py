"""Data and model parallelism on ipyparallel engines that form one MPI world (seed 004).

    with Engines(n=2) as eng:                        # ipp.Cluster(engines="mpi", n=2): ranks 0..n-1 of one world
        dp = DataParallel(eng, ds, net="2h")         # shards on the engines, one Allreduce per step
        mp = ModelParallel(eng, ds, net="2h", schedule="1f1b", micro_batches=8)
        history = mp.fit(epochs=2, batch_size=1000, lr=0.1)

A cluster you start yourself (the venv's MPICH, mpi4py's, first on PATH) is only connected to; it keeps running:

    PATH=$PWD/.venv/bin:$PATH ipcluster start --engines=MPI -n 2 --profile=parbp --daemonize
    Engines(n=2, profile="parbp")                             # ... and ipcluster stop --profile=parbp

The client never carries a tensor while training: it ships each engine its data and layers once, then submits
coarse pieces of work (an epoch, a block of steps) and collects metrics; the engines exchange tensors with mpi4py:
one Allreduce per step (``parbp.distributed.allreduce_step``, as under ``python -m parbp.mpi``), or a pipeline
stage's Isend (``parbp.pipeline``), so that it computes while its message travels.

Faults: every MPI wait on an engine has a deadline (``timeout``), so a rank whose peer died or stopped raises
instead of blocking forever; the client polls its results and the engine processes and raises ``EngineFailure``
naming the engine within a few seconds. The MPI world is then broken: start new Engines.
"""
from __future__ import annotations

import abc
import contextlib
import functools
import itertools
import logging
import os
import re
import socket
import time
from concurrent import futures

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
    """``n`` engines forming one MPI world, started here or those of a running cluster (``profile``), BLAS on one
    thread each. ``timeout`` bounds every MPI wait on the engines and every client wait that is not a training
    piece; ``mpi=False`` starts plain engines (enough for ``parbp.ipp_relay``, which does not use MPI)."""

    def __init__(self, n: int = 2, profile: str | None = None, timeout: float = 10.0, start_timeout: float = 120.0,
                 mpi: bool = True):
        import ipyparallel as ipp

        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"need at least 1 engine, got n={n!r}")
        self.n, self.timeout, self.mpi, self.cluster, self.broken = int(n), timeout, mpi, None, None
        if profile is None:
            from traitlets.config import Config

            # the venv's MPICH, whatever PATH says; ERROR: stopped engines exit non-zero, whose logs would be dumped
            self.cluster = ipp.Cluster(n=self.n, engines="mpi" if mpi else "local", log_level=logging.ERROR,
                                       config=Config({"MPIEngineSetLauncher": {"mpi_cmd": [mpiexec()]}}))
            self.rc = self.cluster.start_and_connect_sync()
        else:
            self.rc = ipp.Client(profile=profile)
        try:
            self.rc.wait_for_engines(self.n, timeout=start_timeout)
        except TimeoutError:
            self.close()
            raise EngineFailure(f"only {len(self.rc.ids)} of {n} engines came up within {start_timeout:g} s") from None
        self.ids, self.pids, self.local = sorted(self.rc.ids)[:self.n], [], []
        info = self.run([(e, _engine_init, (timeout, mpi)) for e in self.ids], "starting up", self.timeout + 20)
        self.ids, info = map(list, zip(*sorted(zip(self.ids, info), key=lambda e_i: e_i[1]["rank"])))  # in rank order
        sizes = sorted({i["size"] for i in info})
        if mpi and (sizes != [self.n] or [i["rank"] for i in info] != list(range(self.n))):
            self.close()
            raise EngineFailure(f"the {self.n} engines are not one MPI world of {self.n} ranks (MPI sizes {sizes}); "
                                f"start them with: ipcluster start --engines=MPI -n {self.n} --profile=NAME")
        self.rank_of = {e: r for r, e in enumerate(self.ids)}
        self.pids, self.local = [i["pid"] for i in info], [i["host"] == socket.gethostname() for i in info]

    # -- submitting and waiting ---------------------------------------------------------------
    def submit(self, engine: int, fn, *args):
        """``fn(*args)`` on ``engine``, its AsyncResult marked with the engine for error messages."""
        ar = self.rc[engine].apply_async(fn, *args)
        ar.parbp_engine = engine
        return ar

    def run(self, calls, what: str, deadline: float | None = None):
        """Submit ``calls`` ([(engine, fn, args), ...]) at once, return their values in order. Raises
        EngineFailure when an engine fails, dies, is stopped, or (``deadline`` seconds) does not answer."""
        if self.broken:
            raise EngineFailure(f"these engines are unusable after an earlier failure ({self.broken}); "
                                f"close them and start new Engines")
        try:
            results = [self.submit(e, fn, *args) for e, fn, args in calls]
        except IndexError:  # ipyparallel's "No such engine": the hub has already dropped one (between two pieces)
            lost = sorted(set(self.ids) - set(self.rc.ids))
            who = self._lost_engines() or f"engine(s) {lost} stopped answering (the hub lost its heartbeat: it died " \
                                          f"or is stopped)"
            self._break(f"{who} while {what}")
        return self._wait(results, what, deadline)

    def get(self, results, what: str):
        """The values of already submitted ``results``, within ``timeout`` seconds (parbp.ipp_relay)."""
        return self._wait(results, what, self.timeout)

    def _wait(self, results, what, deadline):
        t_end, first_done = None if deadline is None else time.monotonic() + deadline, None
        while True:
            done, pending = futures.wait(results, timeout=0.2, return_when=futures.FIRST_EXCEPTION)
            if failed := [r for r in done if r.exception() is not None]:
                self._fail(failed, [r for r in results if not r.done()], what)
            if not pending:
                return [r.get(0) for r in results]
            if gone := self._lost_engines():
                self._break(f"{gone} while {what}")
            # the ranks of a block finish within an MPI deadline of each other; one that lags its peers longer
            # stopped after its last message, where no peer waits on it and only the hub's heartbeat would tell
            first_done = first_done or (time.monotonic() if done else None)
            lags = first_done is not None and time.monotonic() - first_done > 2 * self.timeout
            if lags or (t_end is not None and time.monotonic() > t_end):
                when = f"{2 * self.timeout:g} s after the other engines finished" if lags else f"within {deadline:g} s"
                self._break(f"engine(s) {sorted({r.parbp_engine for r in pending})} stopped answering: "
                            f"no answer while {what} {when}")

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
        if len(dead) > 1 and (first := self._first_dead()) is not None:
            return f"engine {first} died (MPI rank {self.rank_of[first]}; mpiexec then ended the others: {dead})"
        said = [f"engine(s) {dead} died" if dead else "",
                f"engine(s) {stopped} stopped answering (the process is stopped)" if stopped else ""]
        return " and ".join(filter(None, said))

    def _first_dead(self):
        """mpiexec ends the whole world when one rank dies: the log of our own cluster says which one it was."""
        try:
            out = "".join(es.get_output() or "" for es in self.cluster.engines.values())
        except Exception:  # no cluster of ours, or no log: a convenience that must never hide the failure itself
            return None
        pids = [int(pid) for pid in re.findall(r"PID (\d+) RUNNING AT", out) if int(pid) in self.pids]
        return self.ids[self.pids.index(pids[0])] if pids else None

    def _fail(self, failed, pending, what):
        r, err = failed[0], failed[0].exception()
        ename, message = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
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

    def close(self):
        """Stop the cluster started here; only disconnect from somebody else's."""
        if self.cluster is None:
            self.rc.close()
        else:
            with contextlib.suppress(Exception):  # engines that were killed make the launcher's stop complain
                self.cluster.stop_cluster_sync()


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


def _params(key, holder: str):
    """The parameters of this engine's trainer or stage (``holder``) of model ``key``."""
    return _state[key][holder].params


class BoundedComm:
    """An MPI communicator whose every wait has a deadline: non-blocking calls polled with ``Test``. It stands in
    for ``parbp.mpi``'s communicator and watchdog in ``allreduce_step``, so that step runs here unchanged."""

    def __init__(self, comm, timeout: float):
        self.comm, self.timeout, self.rank, self.size = comm, timeout, comm.rank, comm.size
        self._what = "an MPI exchange"

    def complete(self, request, what: str, peer: int | None = None):
        """Poll ``request`` (polling also moves a non-blocking collective along) until done, or PeerTimeout at the
        deadline, yielding the core between polls: a waiting rank must not starve the one it waits for."""
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

    def recv(self, buf, source, tag, what):
        self.complete(self.comm.Irecv(buf, source=source, tag=tag), what, peer=source)
        return buf

    def barrier(self, what):
        self.complete(self.comm.Ibarrier(), what)


# ---- What every model on engines offers, and the training loop they share --------------------------------


class EngineModel(abc.ABC):
    """A network trained on engines (here and in ``parbp.ipp_relay``) or, as the baseline, in this process: it
    runs steps of an epoch and hands back its ``params``; ``fit`` is the one training loop over all of them."""

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
        """One epoch's steps; a model may add or drop columns of its history here."""
        return self.run_steps(epoch, B, lr)

    def place(self, engines: "Engines", ds, net, seed: int, mpi: bool = True) -> None:
        """Train on ``engines`` under a key of its own; ``eval``, a trainer here, starts and evaluates the network."""
        if mpi and not engines.mpi:
            raise ValueError(f"{type(self).__name__} needs MPI engines (Engines(mpi=True)); without MPI, "
                             f"parbp.ipp_relay trains data or model parallel")
        self.eng, self.ds, self.seed, self.key, self.workers = engines, ds, seed, next(_keys), len(engines.ids)
        self.eval = trainers.get("numpy")(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=seed)

    def on_engines(self, fn, *args, what: str, deadline: float | None = None) -> list:
        """``fn(key, *args)`` on every engine, their answers in rank order."""
        return self.eng.run([(e, fn, (self.key, *args)) for e in self.eng.ids], what, deadline)

    def run_block(self, fn, *args) -> tuple[list[dict], dict]:
        """``fn(key, *args)`` (``timed_block``) on every engine: their answers, and the block's seconds (the slowest
        engine's), steps and CPU share (CPU over wall time: below 1 when other work took the engines' cores)."""
        out = self.on_engines(fn, *args, what=f"training ({self.name})")
        return out, {"seconds": max(o["seconds"] for o in out), "steps": out[0]["steps"],
                     "cpu_share": float(np.mean([o["cpu_seconds"] / max(o["seconds"], 1e-9) for o in out]))}

    def check_batch(self, B: int) -> None:
        """Refuse a minibatch this model cannot split, before any engine is asked."""
        if B < self.workers:
            raise ValueError(f"batch_size {B} is smaller than the {self.workers} engines")

    def fit(self, epochs: int, batch_size: int, lr: float, lr_decay: float = 0.0) -> pd.DataFrame:
        """Train; one row per epoch (row 0: the untrained network, so every curve starts at the same point)."""
        self.check_batch(batch_size)
        who = {"method": self.name, "engines": self.workers}
        scores = functools.partial(evaluate, self.eval, self.ds.X_val, self.ds.Y_val, self.ds.y_val)
        rows = [history_row(0, float("nan"), *scores(), 0.0, **who)]
        for epoch in range(epochs):
            r = self.train_epoch(epoch, batch_size, lr_at(lr, lr_decay, epoch))
            self.eval.params = self.params
            rows.append(history_row(epoch + 1, r["train_loss"], *scores(), r["seconds"], **who,
                                    **{k: v for k, v in r.items() if k not in HISTORY},
                                    examples_per_s=r["steps"] * batch_size / r["seconds"]))
        return pd.DataFrame(rows)


def timed_block(comm, steps) -> dict:
    """Engine side: ``steps()`` (a block of steps; it returns their metrics) from a common start, timed."""
    comm.barrier("the start of a block of steps")
    t0, c0 = time.perf_counter(), time.process_time()
    out = steps()
    return {"rank": comm.rank, **out, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


# ---- Data parallel: shards on the engines, one Allreduce per step ----------------------------------------


def shard_batches(shard_sizes, rank: int, epoch: int, batch_size: int, seed: int):
    """Rank ``rank``'s local row indices, step by step: its share of every minibatch, from its shuffled shard."""
    share = [len(a) for a in np.array_split(np.arange(batch_size), len(shard_sizes))]
    steps = min(n // b for n, b in zip(shard_sizes, share))
    order, b = epoch_order(shard_sizes[rank], epoch, seed + 1000 * rank), share[rank]
    return (order[k * b:(k + 1) * b] for k in range(steps))


class Sharded:
    """The training set split into one contiguous shard per engine (``shards``), each drawn in its own order."""

    def shard(self, impl, net) -> None:
        """Send every engine its shard and a trainer (``_dp_setup``)."""
        X, Y = self.ds.X_train, self.ds.Y_train
        self.shards = np.array_split(np.arange(len(X)), self.workers)
        self.shard_sizes = sizes = [len(s) for s in self.shards]
        self.eng.run([(e, _dp_setup, (self.key, impl, net, self.ds.n_in, self.ds.n_out, self.seed, X[s], Y[s], sizes))
                      for e, s in zip(self.eng.ids, self.shards)], "receiving its shard", self.eng.timeout + 60)

    @property
    def params(self):
        return self.eng.run([(self.eng.ids[0], _params, (self.key, "trainer"))], "sending its parameters",
                            self.eng.timeout)[0]

    def batches(self, epoch: int, B: int):
        """Per step, every rank's local row indices (``self.shards[r][local]`` are the global rows, for checks)."""
        return zip(*[shard_batches(self.shard_sizes, r, epoch, B, self.seed) for r in range(self.workers)])


def _dp_setup(key, impl, net, n_in, n_out, seed, X, Y, shard_sizes):
    t = trainers.get(impl)(net=net, n_in=n_in, n_out=n_out, seed=seed)
    _state[key] = dict(trainer=t, packed=PackedGradients(t), X=X, Y=Y, shard_sizes=shard_sizes, seed=seed)
    t.gradients(X[:2], Y[:2])  # warm-up (numba kernels compile here), not timed


def _dp_run(key, epoch, batch_size, lr, first, count):
    """Steps ``first`` .. ``first + count - 1`` of an epoch (count None: to its end). Returns metrics only."""
    st, comm = _state[key], _comm()
    t, X, Y = st["trainer"], st["X"], st["Y"]
    steps = block(shard_batches(st["shard_sizes"], comm.rank, epoch, batch_size, st["seed"]), first, count)

    def run():
        losses = [allreduce_step(t, st["packed"], X[idx], Y[idx], batch_size, lr, comm, comm) for idx in steps]
        return {"steps": len(losses), "loss_sum": float(np.sum(losses))}

    return timed_block(comm, run)


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


def _mp_setup(key, params, layers, sizes, stages, schedule, m, X, Y, n_train, seed):
    s = _comm().rank
    st = pipeline.Stage(params, first=s == 0, last=s == stages - 1)
    _state[key] = dict(stage=st, layers=layers, sizes=sizes, p=stages, m=m, X=X, Y=Y, n=n_train, seed=seed,
                       tasks=pipeline.stage_tasks(schedule, stages, m, s))
    # warm-up: compile the numba kernels before anything is timed, then forget its gradient
    acts = st.forward(np.zeros((2, sizes[layers[0]]), np.float32))
    st.backward(acts, np.zeros((2, sizes[layers[-1] + 1]), np.float32))
    st.fresh = True


def _mp_step(key, comm, idx, B, lr):
    """One minibatch on this stage, its tasks in schedule order (micro-batch j's activations travel under tag 2 j,
    its deltas under 2 j + 1): (sse or 0, busy intervals [(kind, j, start, end)], peak stash bytes, peak count)."""
    S = _state[key]
    st, last, s, micro = S["stage"], S["p"] - 1, comm.rank, np.array_split(idx, S["m"])
    width_in, width_out = S["sizes"][S["layers"][0]], S["sizes"][S["layers"][-1] + 1]
    acts, sends, busy, sse, stash, peak, peak_n = {}, [], [], 0.0, 0, 0, 0
    for kind, j in S["tasks"]:
        rows = micro[j]
        if kind == "F":
            x = S["X"][rows] if s == 0 else comm.recv(
                np.empty((len(rows), width_in), np.float32), s - 1, 2 * j,
                f"receiving the activations of micro-batch {j} from stage {s - 1}")
            t0 = time.perf_counter()
            acts[j] = a = st.forward(x)
            if s < last:
                sends.append((comm.comm.Isend(a[-1], dest=s + 1, tag=2 * j), a[-1]))
            stash += sum(v.nbytes for v in a)
            peak, peak_n = max(peak, stash), max(peak_n, len(acts))
        else:
            if s == last:
                t0 = time.perf_counter()
                e, delta = st.output_delta(acts[j][-1], S["Y"][rows], B)
                sse += e
            else:
                g = comm.recv(np.empty((len(rows), width_out), np.float32), s + 1, 2 * j + 1,
                              f"receiving the deltas of micro-batch {j} from stage {s + 1}")
                t0 = time.perf_counter()
                delta = st.input_delta(g, acts[j][-1])
            below = st.backward(acts[j], delta)
            stash -= sum(v.nbytes for v in acts.pop(j))
            if below is not None:
                sends.append((comm.comm.Isend(below, dest=s - 1, tag=2 * j + 1), below))
        busy.append((kind, j, t0, time.perf_counter()))
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
        out = [_mp_step(key, comm, idx, batch_size, lr) for idx in batches]
        return {"steps": len(out), "loss_sum": sum(o[0] for o in out) / batch_size,
                "busy": [o[1] for o in out] if keep_intervals else [],
                "peak_stash_bytes": max([o[2] for o in out], default=0),
                "peak_stash_micro_batches": max([o[3] for o in out], default=0)}

    return timed_block(comm, run)


class Staged:
    """Layers split over the engines, a ``pipeline.Stage`` each (``_state[key]["stage"]``)."""

    @property
    def params(self):
        stages = self.on_engines(_params, "stage", what="sending its layers", deadline=self.eng.timeout)
        return [wb for stage in stages for wb in stage]


class ModelParallel(Staged, EngineModel):
    """The network's layers split over the MPI engines, run with ``schedule`` ("plain", "gpipe" or "1f1b") on
    ``micro_batches`` per minibatch: summed micro-batch gradients, one update per minibatch, the serial algorithm."""

    def __init__(self, engines: Engines, ds, net="2h", schedule: str = "1f1b", micro_batches: int = 1, seed: int = 0):
        pipeline.check_schedule(schedule, micro_batches)
        self.place(engines, ds, net, seed)
        self.schedule, self.m, self.sizes, p = schedule, int(micro_batches), self.eval.sizes, self.workers
        self.stages = pipeline.split_layers(self.sizes, p)  # raises: more stages than layers
        self.name = {"plain": "model parallel", "gpipe": f"GPipe m={self.m}", "1f1b": f"1F1B m={self.m}"}[schedule]
        params, n = self.eval.params, len(ds.X_train)
        engines.run([(e, _mp_setup, (self.key, [params[l] for l in layers], layers, self.sizes, p, schedule, self.m,
                                     ds.X_train if s == 0 else None, ds.Y_train if s == p - 1 else None, n, seed))
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
             **{k: [o[k] for o in out] for k in ("peak_stash_bytes", "peak_stash_micro_batches")}}
        new = [step_timing(busy, self.schedule, self.m) for busy in zip(*[o["busy"] for o in out])]  # per step
        self.steps += new
        if new:
            r.update({k: float(np.mean([t[k] for t in new])) for k in ("idle_fraction", "idle_predicted")})
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
        kept = [pipeline.activations_kept(self.schedule, self.workers, self.m, s) for s in range(len(self.stages))]
        return pd.DataFrame({"stage": range(len(self.stages)), "micro_batches_formula": kept,
                             "bytes_formula": [k * pipeline.activation_bytes(self.sizes, layers, mb)
                                               for k, layers in zip(kept, self.stages)]})


def step_timing(busy, schedule: str, m: int) -> dict:
    """One step's measured idle fraction (the update after the flush left out) and the one ``pipeline.simulate``
    predicts from the same step's mean task times per stage, with free messages."""
    tasks = [[(a, z) for kind, _, a, z in stage if kind in "FB"] for stage in busy]
    fwd, bwd = ([float(np.mean([z - a for k, _, a, z in stage if k == kind])) for stage in busy] for kind in "FB")
    predicted = pipeline.simulate(schedule, m, fwd, bwd)["idle_fraction"]
    return {"idle_fraction": pipeline.idle_fraction(tasks), "idle_predicted": predicted, "forward_s": fwd,
            "backward_s": bwd, "update_s": [sum(z - a for k, _, a, z in stage if k == "U") for stage in busy],
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

    params = property(lambda self: self.trainer.params)
