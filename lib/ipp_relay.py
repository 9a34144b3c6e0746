"""The client in the middle: data and model parallelism that relay every tensor through the notebook.

Kept as a measured contrast to ``parbp.ipp`` (notebook 07, "what a client in the middle costs"): ipyparallel
engines that do not use MPI cannot send to each other, so here

  data parallel   every step the client sends each engine the reduced gradient of the previous step and
                  the indices of its slice of the next minibatch; the engines return their partial
                  gradients, which the client sums. One client round trip per step.
  model parallel  activations go stage -> client -> next stage, deltas come back the same way; with
                  ``micro_batches`` > 1 the client submits micro-batches as soon as their input is ready
                  (GPipe's order).

Both are the serial algorithm (the tests check it), and both run on the same ``parbp.ipp.Engines``.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import time

import numpy as np
from scipy.special import expit

from .ipp import EngineModel, Engines, _dp_params, _keys, _state, local_trainer
from .distributed import Flat, epoch_order
from .train import minibatches
from .pipeline import bubble_theory, idle_fraction, split_layers



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


class RelayDataParallel(EngineModel):
    """Synchronous data-parallel SGD: engines compute partial gradients on their shards, the client reduces."""

    name = "data parallel (client relay)"

    def __init__(self, engines: Engines, ds, net="1h", impl="numpy", seed: int = 0):
        self.eng, self.ds, self.seed, self.key = engines, ds, seed, next(_keys)
        self.workers = p = len(engines.ids)
        n = len(ds.X_train)
        self.shards = np.array_split(np.arange(n), p)
        self.eval = local_trainer(net, ds, seed)
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

    def run_steps(self, epoch, B, lr, first=0, count=None) -> dict:
        eng, reduced, losses, busy = self.eng, None, [], []
        t0 = time.perf_counter()
        for local in itertools.islice(self.batches(epoch, B), first, None if count is None else first + count):
            out = eng.get([eng.submit(e, _dp_step, self.key, reduced, lr, idx, B) for e, idx in zip(eng.ids, local)],
                          "computing a partial gradient")
            reduced = np.sum([g for g, _ in out], axis=0)  # the reduction, on the client
            losses.append(float(reduced[-1]))
            busy.append([t for _, t in out])
        eng.get([eng.submit(e, _dp_step, self.key, reduced, lr, None, B) for e in eng.ids], "applying the last gradient")
        return {"train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, "steps": len(losses)}

    @property
    def params(self):
        return self.eng.get([self.eng.submit(self.eng.ids[0], _dp_params, self.key)], "sending its parameters")[0]


# --------------------------------------------------------------------------------------------
# Model parallel: consecutive layers on different engines, optionally pipelined


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
        A.append(expit(A[-1] @ W + b))
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


class RelayModelParallel(EngineModel):
    """Layers split over the engines; ``micro_batches`` = 1 runs the stages strictly in turn, more pipelines."""

    def __init__(self, engines: Engines, ds, net="2h", micro_batches: int = 1, seed: int = 0):
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.eng, self.ds, self.seed, self.m, self.key = engines, ds, seed, micro_batches, next(_keys)
        self.workers = len(engines.ids)
        self.name = "model parallel (client relay)" if micro_batches == 1 else f"GPipe m={micro_batches} (client relay)"
        self.eval = local_trainer(net, ds, seed)
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
        self.bubbles.append(idle_fraction(busy))
        return loss

    def run_steps(self, epoch, B, lr, first=0, count=None) -> dict:
        X, Y = self.ds.X_train, self.ds.Y_train
        t0, losses = time.perf_counter(), []
        start = len(self.bubbles)
        for idx in itertools.islice(minibatches(epoch_order(len(X), epoch, self.seed), B, drop_last=True), first, None if count is None else first + count):
            losses.append(self.step(X[idx], Y[idx], lr))
        return {"train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, "steps": len(losses),
                "idle_fraction": float(np.mean(self.bubbles[start:])),
                "idle_theory": bubble_theory(len(self.stages), self.m)}

    @property
    def params(self):
        return [wb for stage in self.eng.get([self.eng.submit(e, _stage_params, self.key) for e in self.eng.ids],
                                             "sending its layers") for wb in stage]
