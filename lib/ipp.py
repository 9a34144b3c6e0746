"""Data and model parallelism on ipyparallel engines (seed 004), driven from a notebook.

    with Engines(n=2) as eng:                                  # starts ipp.Cluster(n=2) on this machine
        dp = DataParallel(eng, ds, net="1h")                   # engines hold shards, the client reduces
        mp = ModelParallel(eng, ds, net="2h", micro_batches=4) # consecutive layers on different engines
        history = mp.fit(epochs=2, batch_size=100, lr=0.1)

An existing cluster (say ``ipcluster start -n 2 --profile=parbp``) is used with ``Engines(n=2, profile="parbp")``;
``Engines`` then only connects, and leaves the cluster running when it is closed.

Data parallel: every engine holds a shard of the training set and a replica of the network. Each step
the client sends every engine the reduced gradient of the previous step (the engines apply it) and the
indices of its slice of the next minibatch; the engines return their partial gradients, weighted by
slice size, packed in one vector; the client sums them. One round trip per step.

Model parallel: the layers are split into consecutive stages, one per engine. ipyparallel engines do not
talk to each other, so activations go stage -> client -> next stage, and deltas come back the same way.
With ``micro_batches=m`` > 1 the minibatch is cut into m micro-batches and the client submits them as
soon as their input is ready (GPipe): stage 0 works on micro-batch 2 while stage 1 works on micro-batch 1,
all forwards first, then all backwards, gradients accumulated and applied once per minibatch, so the
update is exactly the serial trainer's. Every stage records when it was busy; the idle ("bubble")
fraction of a step is compared with the GPipe theory (p - 1) / (m + p - 1).

Faults: every wait on an engine has a deadline (``timeout``); an engine that dies or stops answering
raises ``EngineFailure`` naming it, instead of hanging the notebook.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import time

import numpy as np
import pandas as pd

from .mpi import Flat, epoch_order, evaluate, lr_at, minibatches


class EngineFailure(RuntimeError):
    """An engine died, raised, or did not answer in time; the message says which and what it was doing."""


# --------------------------------------------------------------------------------------------
# The engines


class Engines:
    """``n`` ipyparallel engines: started here with ``ipp.Cluster(n=n)``, or those of a running cluster
    found through ``profile``. Each engine pins its BLAS to one thread (one engine per core)."""

    def __init__(self, n: int = 2, profile: str | None = None, timeout: float = 20.0, start_timeout: float = 120.0):
        import ipyparallel as ipp

        if n < 1:
            raise ValueError(f"need at least 1 engine, got n={n}")
        self.timeout, self.cluster = timeout, None
        if profile is None:
            # ERROR: stopping engines makes them exit non-zero, and the launcher would dump their logs as warnings
            self.cluster = ipp.Cluster(n=n, log_level=logging.ERROR)
            self.rc = self.cluster.start_and_connect_sync()
        else:
            self.rc = ipp.Client(profile=profile)
        try:
            self.rc.wait_for_engines(n, timeout=start_timeout)
        except TimeoutError:
            self.close()
            raise EngineFailure(f"only {len(self.rc.ids)} of {n} engines came up within {start_timeout:g} s") from None
        self.ids = sorted(self.rc.ids)[:n]
        self.pids = self.get([self.submit(e, _engine_init) for e in self.ids], "starting up")

    def submit(self, engine: int, fn, *args):
        ar = self.rc[engine].apply_async(fn, *args)
        ar.parbp_engine = engine  # for error messages: which engine this result is waiting on
        return ar

    def get(self, results, what: str):
        """The values of ``results`` (AsyncResults), or EngineFailure after ``timeout`` seconds."""
        done, pending = concurrent.futures.wait(results, timeout=self.timeout)
        if pending:
            alive = set(self.rc.ids)
            lost = [e for e in self.ids if e not in alive]
            who = f"engine(s) {lost} died" if lost else f"engine(s) {sorted({r.parbp_engine for r in pending})} stopped answering"
            raise EngineFailure(f"{who}: no answer while {what} within {self.timeout:g} s")
        out = []
        for r in results:
            try:
                out.append(r.get(0))
            except Exception as e:  # EngineError (engine died), RemoteError (it raised), ...
                raise EngineFailure(f"engine {r.parbp_engine} failed while {what}: {type(e).__name__}: {e}") from e
        return out

    def close(self):
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()  # ours: stop it
        else:
            self.rc.close()  # somebody else's: just disconnect

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Engine-side state and functions. The engines import this module, so the functions travel by reference.
# Every model object keeps its state under its own key, so several can share the same engines.
_state: dict = {}
_keys = itertools.count()


def _engine_init():
    import os

    from threadpoolctl import threadpool_limits

    _state.clear()
    _state["blas"] = threadpool_limits(1)  # kept alive: the limit holds for the engine's lifetime
    return os.getpid()


# --------------------------------------------------------------------------------------------
# Data parallel: shards on the engines, the reduction on the client


def _dp_setup(key, impl, net, n_in, n_out, seed, X, Y):
    from . import trainers

    t = trainers.get(impl)(net=net, n_in=n_in, n_out=n_out, seed=seed)
    flat = Flat(t.sizes, t.dtype, extra=1)
    _state[key] = dict(trainer=t, flat=flat, X=X, Y=Y, buf=flat.empty())
    return len(X)


def _dp_step(key, reduced, lr, idx, B):
    """Apply the previous step's reduced gradient (if any), then return this slice's weighted gradient."""
    t0 = time.perf_counter()
    st = _state[key]
    t, flat, buf = st["trainer"], st["flat"], st["buf"]
    if reduced is not None:
        t.apply_gradients(flat.views(reduced), lr)
    if idx is None:
        return None, (t0, time.perf_counter())
    loss, g = t.gradients(st["X"][idx], st["Y"][idx])
    flat.pack(g, buf, scale=len(idx) / B)
    buf[-1] = loss * len(idx) / B
    return buf, (t0, time.perf_counter())


def _get_params(key):
    return _state[key]["trainer"].params


class DataParallel:
    """Synchronous data-parallel SGD: engines compute partial gradients on their shards, the client reduces."""

    name = "data parallel"

    def __init__(self, engines: Engines, ds, net="1h", impl="numpy", seed: int = 0):
        self.eng, self.ds, self.seed, self.key = engines, ds, seed, next(_keys)
        self.workers = p = len(engines.ids)
        n = len(ds.X_train)
        self.shards = np.array_split(np.arange(n), p)
        self.eval = _local_trainer(net, ds, seed)
        self.flat = Flat(self.eval.sizes, self.eval.dtype, extra=1)
        engines.get([engines.submit(e, _dp_setup, self.key, impl, net, ds.n_in, ds.n_out, seed,
                                    ds.X_train[s], ds.Y_train[s]) for e, s in zip(engines.ids, self.shards)],
                    "receiving its shard")

    def batches(self, epoch: int, B: int):
        """Per step, the local row indices each engine uses: engine i takes its share of the B examples
        from its own shuffled shard. (``self.shards[i][local]`` are the global rows, for checks.)"""
        p = len(self.shards)
        share = [len(a) for a in np.array_split(np.arange(B), p)]
        orders = [epoch_order(len(s), epoch, self.seed + 1000 * i) for i, s in enumerate(self.shards)]
        steps = min(len(s) // b for s, b in zip(self.shards, share))
        for k in range(steps):
            yield [o[k * b:(k + 1) * b] for o, b in zip(orders, share)]

    def train_epoch(self, epoch, B, lr) -> dict:
        eng, reduced, losses, busy = self.eng, None, [], []
        t0 = time.perf_counter()
        for local in self.batches(epoch, B):
            out = eng.get([eng.submit(e, _dp_step, self.key, reduced, lr, idx, B) for e, idx in zip(eng.ids, local)],
                          "computing a partial gradient")
            reduced = np.sum([g for g, _ in out], axis=0)  # the reduction, on the client
            losses.append(float(reduced[-1]))
            busy.append([t for _, t in out])
        eng.get([eng.submit(e, _dp_step, self.key, reduced, lr, None, B) for e in eng.ids], "applying the last gradient")
        return {"train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, "steps": len(losses)}

    @property
    def params(self):
        return self.eng.get([self.eng.submit(self.eng.ids[0], _get_params, self.key)], "sending its parameters")[0]

    def fit(self, epochs, batch_size, lr, lr_decay=0.0):
        return _fit(self, epochs, batch_size, lr, lr_decay)


# --------------------------------------------------------------------------------------------
# Model parallel: consecutive layers on different engines, optionally pipelined


def split_layers(sizes, parts: int) -> list[list[int]]:
    """Consecutive layer indices for each of ``parts`` stages, balancing the weights (~ the FLOPs) per stage."""
    n_layers = len(sizes) - 1
    if not 1 <= parts <= n_layers:
        raise ValueError(f"cannot split {n_layers} layers into {parts} stages; use 1 to {n_layers} engines "
                         f"(a deeper net, e.g. net='2h', has more layers)")
    cost = [sizes[l] * sizes[l + 1] for l in range(n_layers)]
    # try every placement of the cuts (nets here have a handful of layers) and keep the most even one
    from itertools import combinations

    best = None
    for cuts in combinations(range(1, n_layers), parts - 1):
        bounds = [0, *cuts, n_layers]
        worst = max(sum(cost[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
        if best is None or worst < best[0]:
            best = (worst, bounds)
    bounds = best[1]
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _stage_setup(key, params, last: bool):
    _state[key] = dict(params=[(np.array(W, np.float32), np.array(b, np.float32)) for W, b in params],
                       last=last, acts={}, grads=None, busy=[])


def _stage_forward(key, mid, X, Y=None, B=None):
    """Forward through this stage's layers for micro-batch ``mid`` (eq. 4-5), keeping the activations.
    The last stage goes on: loss, output delta (scaled by 2/B for the whole minibatch, eq. 7) and its
    own backward pass; it returns (loss, dA_in) instead of its output."""
    t0 = time.perf_counter()
    st = _state[key]
    A = [np.asarray(X, np.float32)]
    for W, b in st["params"]:
        A.append(_sigmoid(A[-1] @ W + b))
    if not st["last"]:
        st["acts"][mid] = A
        out = A[-1]
    else:
        err = A[-1] - Y
        loss = float(np.einsum("ij,ij->", err, err, dtype=np.float64)) / B
        delta = np.float32(2.0 / B) * err * A[-1] * (1.0 - A[-1])
        out = (loss, _stage_backprop(st, A, delta))
    st["busy"].append((t0, time.perf_counter()))
    return out


def _stage_backward(key, mid, dA, first: bool):
    """Backward through this stage for micro-batch ``mid``, given dL/d(output activations)."""
    t0 = time.perf_counter()
    st = _state[key]
    A = st["acts"].pop(mid)
    out = _stage_backprop(st, A, dA * A[-1] * (1.0 - A[-1]), need_input_grad=not first)
    st["busy"].append((t0, time.perf_counter()))
    return out


def _stage_backprop(st, A, delta, need_input_grad=True):
    """eqs. 8-9 through this stage's layers, accumulating the weight gradients over micro-batches;
    returns dL/d(stage input) for the stage before, or None."""
    params = st["params"]
    if st["grads"] is None:
        st["grads"] = [(np.zeros_like(W), np.zeros_like(b)) for W, b in params]
    for l in range(len(params) - 1, -1, -1):
        gW, gb = st["grads"][l]
        gW += A[l].T @ delta
        gb += delta.sum(axis=0)
        if l > 0:
            delta = (delta @ params[l][0].T) * A[l] * (1.0 - A[l])
    return delta @ params[0][0].T if need_input_grad else None


def _stage_update(key, lr):
    """Apply the accumulated gradient; return this stage's busy intervals of the step."""
    st = _state[key]
    for (W, b), (gW, gb) in zip(st["params"], st["grads"]):
        W -= np.float32(lr) * gW
        b -= np.float32(lr) * gb
    st["grads"] = None
    busy, st["busy"] = st["busy"], []
    return busy


def _stage_params(key):
    return [(W.copy(), b.copy()) for W, b in _state[key]["params"]]


class ModelParallel:
    """Layers split over the engines; ``micro_batches`` = 1 runs the stages strictly in turn, more pipelines."""

    def __init__(self, engines: Engines, ds, net="2h", micro_batches: int = 1, seed: int = 0):
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.eng, self.ds, self.seed, self.m, self.key = engines, ds, seed, micro_batches, next(_keys)
        self.workers = len(engines.ids)
        self.name = "model parallel" if micro_batches == 1 else f"pipelined (m={micro_batches})"
        self.eval = _local_trainer(net, ds, seed)
        self.stages = split_layers(self.eval.sizes, len(engines.ids))
        params = self.eval.params
        engines.get([engines.submit(e, _stage_setup, self.key, [params[l] for l in layers], s == len(self.stages) - 1)
                     for s, (e, layers) in enumerate(zip(engines.ids, self.stages))], "receiving its layers")
        self.bubbles = []

    def step(self, X, Y, lr) -> float:
        """One SGD step on a minibatch, micro-batches scheduled as soon as their inputs are ready."""
        eng, p, B = self.eng, len(self.stages), len(X)
        if self.m > B:
            raise ValueError(f"micro_batches={self.m} is larger than the minibatch ({B} examples)")
        micro = np.array_split(np.arange(B), self.m)
        # what is in flight: future -> (kind, stage, micro-batch)
        key = self.key
        inflight = {eng.submit(eng.ids[0], _stage_forward, key, j, X[micro[j]]) if p > 1 else
                    eng.submit(eng.ids[0], _stage_forward, key, j, X[micro[j]], Y[micro[j]], B): ("f", 0, j)
                    for j in range(self.m)}
        loss, remaining = 0.0, self.m * p  # every micro-batch finishes once per stage going backwards
        while remaining:
            done, _ = concurrent.futures.wait(list(inflight), timeout=eng.timeout,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                eng.get(list(inflight), "running a pipeline stage")  # raises EngineFailure naming the engine
            for fut in done:
                kind, s, j = inflight.pop(fut)
                out = eng.get([fut], f"running stage {s} on micro-batch {j}")[0]
                if kind == "f" and s + 1 < p - 1:  # a middle stage is next
                    nxt = eng.submit(eng.ids[s + 1], _stage_forward, key, j, out)
                    inflight[nxt] = ("f", s + 1, j)
                elif kind == "f" and s + 1 == p - 1:  # the last stage: forward + loss + its backward
                    nxt = eng.submit(eng.ids[s + 1], _stage_forward, key, j, out, Y[micro[j]], B)
                    inflight[nxt] = ("b", s + 1, j)
                else:  # kind "b" (or a 1-stage "f"): stage s finished backward for j
                    remaining -= 1
                    if s == p - 1:
                        d_loss, dA = out
                        loss += d_loss
                    else:
                        dA = out
                    if s > 0:
                        nxt = eng.submit(eng.ids[s - 1], _stage_backward, key, j, dA, s - 1 == 0)
                        inflight[nxt] = ("b", s - 1, j)
        busy = eng.get([eng.submit(e, _stage_update, key, lr) for e in eng.ids], "applying its gradient")
        self.bubbles.append(bubble(busy))
        return loss

    def train_epoch(self, epoch, B, lr) -> dict:
        X, Y = self.ds.X_train, self.ds.Y_train
        t0, losses = time.perf_counter(), []
        start = len(self.bubbles)
        for idx in minibatches(len(X), B, epoch, self.seed):
            losses.append(self.step(X[idx], Y[idx], lr))
        return {"train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, "steps": len(losses),
                "idle_fraction": float(np.mean(self.bubbles[start:])),
                "idle_theory": (len(self.stages) - 1) / (self.m + len(self.stages) - 1)}

    @property
    def params(self):
        return [wb for stage in self.eng.get([self.eng.submit(e, _stage_params, self.key) for e in self.eng.ids],
                                             "sending its layers") for wb in stage]

    def fit(self, epochs, batch_size, lr, lr_decay=0.0):
        return _fit(self, epochs, batch_size, lr, lr_decay)


def bubble(busy: list[list[tuple[float, float]]]) -> float:
    """Idle fraction of one pipelined step: 1 - (time the stages computed) / (stages x the step's span).

    ``busy[s]`` holds stage s's (start, end) compute intervals, on the machine-wide monotonic clock
    (time.perf_counter is CLOCK_MONOTONIC on Linux, the same in every process). Communication through
    the client counts as idle: that is what a stage waiting for its input is.
    """
    starts = [a for b in busy for a, _ in b]
    ends = [z for b in busy for _, z in b]
    span = max(ends) - min(starts)
    work = sum(z - a for b in busy for a, z in b)
    return 1.0 - work / (len(busy) * span)


class Serial:
    """The baseline in this process (BLAS on one thread), on ModelParallel's minibatch order, same ``fit``."""

    name = "serial"

    def __init__(self, ds, net="2h", impl="numpy", seed: int = 0):
        from . import trainers

        self.ds, self.seed = ds, seed
        self.trainer = trainers.get(impl)(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=seed)
        self.eval, self.workers = self.trainer, 1

    def train_epoch(self, epoch, B, lr) -> dict:
        from threadpoolctl import threadpool_limits

        X, Y = self.ds.X_train, self.ds.Y_train
        t0 = time.perf_counter()
        with threadpool_limits(1):  # one core, like each engine
            losses = [self.trainer.step(X[idx], Y[idx], lr) for idx in minibatches(len(X), B, epoch, self.seed)]
        return {"train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, "steps": len(losses)}

    @property
    def params(self):
        return self.trainer.params

    def fit(self, epochs, batch_size, lr, lr_decay=0.0):
        return _fit(self, epochs, batch_size, lr, lr_decay)


# --------------------------------------------------------------------------------------------


def _local_trainer(net, ds, seed):
    """A trainer on the client: the starting parameters, and evaluation of what the engines learned."""
    from . import trainers

    return trainers.get("numpy")(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=seed)


def _fit(model, epochs, batch_size, lr, lr_decay) -> pd.DataFrame:
    """Train and return one row per epoch (row 0: the untrained network, so every curve starts at the
    same point): losses, validation accuracy, training seconds and examples per second."""
    if batch_size < model.workers:
        raise ValueError(f"batch_size {batch_size} is smaller than the {model.workers} engines")
    val_loss, val_acc = evaluate(model.eval, model.ds.X_val, model.ds.Y_val, model.ds.y_val)
    rows = [{"method": model.name, "engines": model.workers, "epoch": 0, "val_loss": val_loss, "val_acc": val_acc}]
    for epoch in range(epochs):
        r = model.train_epoch(epoch, batch_size, lr_at(lr, lr_decay, epoch))
        model.eval.params = model.params
        val_loss, val_acc = evaluate(model.eval, model.ds.X_val, model.ds.Y_val, model.ds.y_val)
        rows.append({"method": model.name, "engines": model.workers, "epoch": epoch + 1, **r,
                     "val_loss": val_loss, "val_acc": val_acc,
                     "examples_per_s": r["steps"] * batch_size / r["seconds"]})
    return pd.DataFrame(rows)
