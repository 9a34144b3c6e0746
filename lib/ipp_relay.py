"""The client in the middle: data and model parallelism that relay every tensor through the notebook.

A measured contrast to ``parbp.ipp`` (notebook 07, "what a client in the middle costs"): engines without MPI
cannot send to each other, so here

  data parallel   each step the client sends every engine the last reduced gradient and its slice of the
                  next minibatch, and sums the partial gradients they return: one round trip per step.
  model parallel  activations go stage -> client -> next stage, deltas come back the same way; with
                  ``micro_batches`` > 1 micro-batches go as soon as their input is ready (GPipe's order).

Both are the serial algorithm (the tests check it), on the same ``parbp.ipp.Engines``.
"""
from __future__ import annotations

import time
from concurrent import futures

import numpy as np

from . import pipeline
from .distributed import block, epoch_batches
from .ipp import EngineModel, Engines, Sharded, Staged, _state


# ---- Data parallel: shards on the engines, the reduction on the client -----------------------------------


def _dp_step(key, reduced, lr, idx, B):
    """Apply the previous step's reduced gradient (if any), then return this slice's weighted gradient (if any)."""
    st = _state[key]
    t, packed = st["trainer"], st["packed"]
    if reduced is not None:
        t.apply_gradients(packed.flat.views(reduced), lr)
    if idx is not None:
        loss, g = t.gradients(st["X"][idx], st["Y"][idx])
        return packed.pack(loss, g, len(idx) / B)


class RelayDataParallel(Sharded, EngineModel):
    """Synchronous data-parallel SGD: engines compute partial gradients on their shards, the client reduces."""

    name = "data parallel (client relay)"

    def __init__(self, engines: Engines, ds, net="1h", impl="numpy", seed: int = 0):
        self.place(engines, ds, net, seed, mpi=False)
        self.shard(impl, net)

    def run_steps(self, epoch, B, lr, first=0, count=None) -> dict:
        eng, reduced, losses, t0 = self.eng, None, [], time.perf_counter()
        for local in block(self.batches(epoch, B), first, count):
            partial = eng.run([(e, _dp_step, (self.key, reduced, lr, idx, B)) for e, idx in zip(eng.ids, local)],
                              "computing a partial gradient", eng.timeout)
            reduced = np.sum(partial, axis=0)  # the reduction, on the client
            losses.append(float(reduced[-1]))
        self.on_engines(_dp_step, reduced, lr, None, B, what="applying the last gradient", deadline=eng.timeout)
        return {"train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, "steps": len(losses)}


# ---- Model parallel: consecutive layers on different engines (``pipeline.Stage``), optionally pipelined ----


def _stage_setup(key, params, first: bool, last: bool):
    _state[key] = dict(stage=pipeline.Stage(params, first=first, last=last), acts={}, busy=[])


def _stage_forward(key, mid, X, Y=None, B=None):
    """Forward through this stage for micro-batch ``mid``, keeping the activations; the last stage goes on
    (loss, output delta for the whole B-example minibatch, backward) and returns (loss, dL/d(its input))."""
    t0, S = time.perf_counter(), _state[key]
    st = S["stage"]
    acts = st.forward(np.asarray(X, np.float32))
    if st.last:
        sse, delta = st.output_delta(acts[-1], Y, B)
        out = (sse / B, st.backward(acts, delta))
    else:
        S["acts"][mid] = acts
        out = acts[-1]
    S["busy"].append((t0, time.perf_counter()))
    return out


def _stage_backward(key, mid, dA):
    """Backward for micro-batch ``mid`` from dL/d(its output): dL/d(its input), None on the first stage."""
    t0, S = time.perf_counter(), _state[key]
    acts = S["acts"].pop(mid)
    out = S["stage"].backward(acts, S["stage"].input_delta(np.array(dA, np.float32), acts[-1]))  # a writable copy
    S["busy"].append((t0, time.perf_counter()))
    return out


def _stage_update(key, lr):
    """Apply the summed gradient; return this stage's busy intervals of the step."""
    _state[key]["stage"].update(lr)
    busy, _state[key]["busy"] = _state[key]["busy"], []
    return busy


class RelayModelParallel(Staged, EngineModel):
    """Layers split over the engines; ``micro_batches`` = 1 runs the stages strictly in turn, more pipelines."""

    def __init__(self, engines: Engines, ds, net="2h", micro_batches: int = 1, seed: int = 0):
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.place(engines, ds, net, seed, mpi=False)
        self.m, self.bubbles = micro_batches, []
        self.name = f"{'model parallel' if micro_batches == 1 else f'GPipe m={micro_batches}'} (client relay)"
        self.stages = pipeline.split_layers(self.eval.sizes, len(engines.ids))
        params, p = self.eval.params, len(self.stages)
        engines.run([(e, _stage_setup, (self.key, [params[l] for l in layers], s == 0, s == p - 1))
                     for s, (e, layers) in enumerate(zip(engines.ids, self.stages))], "receiving its layers",
                    engines.timeout)

    def step(self, X, Y, lr) -> float:
        """One SGD step on a minibatch, micro-batches scheduled as soon as their inputs are ready."""
        eng, p, B = self.eng, len(self.stages), len(X)
        if self.m > B:
            raise ValueError(f"micro_batches={self.m} is larger than the minibatch ({B} examples)")
        micro, inflight = np.array_split(np.arange(B), self.m), {}  # in flight: future -> (kind, stage, micro-batch)

        def forward(s, j, x):  # the last stage goes on: loss, output delta and its own backward
            more = (Y[micro[j]], B) if s == p - 1 else ()
            inflight[eng.submit(eng.ids[s], _stage_forward, self.key, j, x, *more)] = ("b" if more else "f", s, j)

        for j in range(self.m):
            forward(0, j, X[micro[j]])
        loss, remaining = 0.0, self.m * p  # every micro-batch finishes once per stage going backwards
        while remaining:
            done, _ = futures.wait(list(inflight), timeout=eng.timeout, return_when=futures.FIRST_COMPLETED)
            if not done:
                eng.get(list(inflight), "running a pipeline stage")  # raises EngineFailure naming the engine
            for fut in done:
                kind, s, j = inflight.pop(fut)
                out = eng.get([fut], f"running stage {s} on micro-batch {j}")[0]
                if kind == "f":
                    forward(s + 1, j, out)
                    continue
                remaining -= 1  # stage s finished backward for j
                if s == p - 1:
                    loss, out = loss + out[0], out[1]
                if s > 0:
                    inflight[eng.submit(eng.ids[s - 1], _stage_backward, self.key, j, out)] = ("b", s - 1, j)
        busy = self.on_engines(_stage_update, lr, what="applying its gradient", deadline=eng.timeout)
        self.bubbles.append(pipeline.idle_fraction(busy))
        return loss

    def run_steps(self, epoch, B, lr, first=0, count=None) -> dict:
        X, Y = self.ds.X_train, self.ds.Y_train
        t0, start = time.perf_counter(), len(self.bubbles)
        batches = block(epoch_batches(len(X), epoch, self.seed, B), first, count)
        losses = [self.step(X[idx], Y[idx], lr) for idx in batches]
        return {"train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, "steps": len(losses),
                "idle_fraction": float(np.mean(self.bubbles[start:])),
                "idle_theory": pipeline.bubble_theory(len(self.stages), self.m)}
