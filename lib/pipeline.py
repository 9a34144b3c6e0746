"""Pipelined model parallelism: the split, the schedules, their bubble, their memory, and one stage's math.

A network of L layers is cut into p stages of consecutive layers; a minibatch of B examples into m
micro-batches. Each stage runs forward (F) and backward (B) tasks on micro-batches in the order its
schedule gives:

  plain   m = 1: one stage works at a time, the others wait.
  gpipe   GPipe (Huang et al., NeurIPS 2019): all m forwards, then all m backwards. A stage keeps the
          activations of all m micro-batches until their backward.
  1f1b    PipeDream-flush (Narayanan et al., ICML 2021): stage s runs p - s - 1 warm-up forwards, then
          alternates one forward and one backward, then drains the backwards. It keeps at most p - s
          micro-batches of activations (at most p), whatever m is.

Both pipelines flush at the end of every minibatch and apply the summed micro-batch gradients once,
so they compute the serial trainer's update exactly. With equal stages and free communication their
idle ("bubble") fraction is (p - 1) / (m + p - 1); ``simulate`` gives it for unequal stages and for
messages that cost time, from per-stage task times.

Nothing here talks to other processes: ``parbp.ipp`` runs ``Stage`` on MPI engines.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

from . import blas, cpu

SCHEDULES = ("plain", "gpipe", "1f1b")


def check_schedule(schedule: str, micro_batches: int) -> None:
    """ValueError unless ``schedule`` is known and ``micro_batches`` a count it can run."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if not isinstance(micro_batches, (int, np.integer)) or micro_batches < 1:
        raise ValueError(f"micro_batches must be an integer >= 1, got {micro_batches!r}")
    if schedule == "plain" and micro_batches != 1:
        raise ValueError(f"schedule 'plain' runs one micro-batch (micro_batches=1), got micro_batches="
                         f"{micro_batches}; use 'gpipe' or '1f1b' to pipeline")


# ---- The split -------------------------------------------------------------------------------------------


def layer_flops(sizes) -> list[float]:
    """FLOPs per example of each layer in one training step: forward 2ab, backward 4ab (the weight
    gradient and the delta for the layer below), except the first layer, which needs no delta below."""
    return [2 * a * b * (2 if l == 0 else 3) for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


def split_layers(sizes, parts: int) -> list[list[int]]:
    """Consecutive layer indices for each of ``parts`` stages, minimizing the most expensive stage's FLOPs."""
    n_layers = len(sizes) - 1
    if not isinstance(parts, (int, np.integer)) or not 1 <= parts <= n_layers:
        raise ValueError(f"cannot split {n_layers} layers into {parts} stages; use 1 to {n_layers} stages "
                         f"(a deeper net, e.g. net='2h', has more layers)")
    cost = layer_flops(sizes)
    splits = ([0, *cuts, n_layers] for cuts in combinations(range(1, n_layers), parts - 1))  # a handful of layers
    bounds = min(splits, key=lambda b: max(sum(cost[a:z]) for a, z in zip(b[:-1], b[1:])))
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


def stage_flops(sizes, stages) -> list[float]:
    """Training FLOPs per example of each stage (lists of layer indices)."""
    cost = layer_flops(sizes)
    return [sum(cost[l] for l in layers) for layers in stages]


# ---- Schedules, simulated --------------------------------------------------------------------------------


def stage_tasks(schedule: str, stages: int, micro_batches: int, stage: int) -> list[tuple[str, int]]:
    """The order of stage ``stage``'s tasks in one minibatch: ("F", j) and ("B", j) for micro-batch j."""
    check_schedule(schedule, micro_batches)
    m = micro_batches
    warm = m if schedule != "1f1b" else min(stages - stage - 1, m)  # GPipe: every forward before a backward
    steady = [task for j in range(m - warm) for task in (("F", warm + j), ("B", j))]  # one forward, one backward
    return [("F", j) for j in range(warm)] + steady + [("B", j) for j in range(m - warm, m)]


def simulate(schedule: str, micro_batches: int, forward_s, backward_s, message_s=0.0, transfer_s=0.0) -> dict:
    """Run a schedule on paper: stage s takes ``forward_s[s]`` per forward and ``backward_s[s]`` per backward
    of one micro-batch; a message between neighbours takes ``message_s`` plus ``transfer_s``, the time its bytes
    occupy the link (β·n), so messages in one direction of one link queue behind each other. Returns the step's
    span, each stage's busy time, the idle fraction 1 - Σ busy / (p · span), and each task's (start, end)."""
    p = len(forward_s)
    if len(backward_s) != p:
        raise ValueError("forward_s and backward_s need one time per stage each")
    tasks = [stage_tasks(schedule, p, micro_batches, s) for s in range(p)]
    timeline: dict[tuple[str, int, int], tuple[float, float]] = {}  # (kind, stage, micro-batch) -> (start, end)
    clock, nxt = [0.0] * p, [0] * p
    link_free: dict[tuple[int, int], float] = {}  # (from, to): when the link is free again
    while any(nxt[s] < len(tasks[s]) for s in range(p)):  # every schedule above is deadlock-free
        for s in (s for s in range(p) if nxt[s] < len(tasks[s])):
            kind, j = tasks[s][nxt[s]]
            src = s - 1 if kind == "F" else s + 1  # the forward of the stage before, the backward of the one after
            ready = 0.0
            if 0 <= src < p:
                if (kind, src, j) not in timeline:
                    continue
                # a stage consumes its inputs in the order they were sent
                leaves = max(timeline[(kind, src, j)][1], link_free.get((src, s), 0.0))
                link_free[(src, s)] = leaves + transfer_s
                ready = leaves + transfer_s + message_s
            start = max(clock[s], ready)
            clock[s] = start + (forward_s[s] if kind == "F" else backward_s[s])
            timeline[(kind, s, j)] = (start, clock[s])
            nxt[s] += 1
    span = max(clock)
    busy = [micro_batches * (f + b) for f, b in zip(forward_s, backward_s)]
    return {"span_s": span, "busy_s": busy, "idle_fraction": 1.0 - sum(busy) / (p * span), "timeline": timeline}


def bubble_theory(stages: int, micro_batches: int) -> float:
    """GPipe's idle fraction with equal stages and free messages: (p - 1) / (m + p - 1)."""
    return (stages - 1) / (micro_batches + stages - 1)


def idle_fraction(busy) -> float:
    """Measured idle fraction of one step: 1 - (time the stages computed) / (stages x the step's span).

    ``busy[s]`` holds stage s's (start, end) compute intervals on one clock (time.perf_counter is
    CLOCK_MONOTONIC on Linux, the same in every process of a machine). Waiting for a message counts as idle."""
    intervals = [interval for stage in busy for interval in stage]
    span = max(z for _, z in intervals) - min(a for a, _ in intervals)
    return 1.0 - sum(z - a for a, z in intervals) / (len(busy) * span)


def activations_kept(schedule: str, stages: int, micro_batches: int, stage: int) -> int:
    """The most micro-batches whose activations stage ``stage`` holds at once: m for GPipe, p - s for 1F1B."""
    check_schedule(schedule, micro_batches)
    return min(stages - stage, micro_batches) if schedule == "1f1b" else micro_batches


def activation_bytes(sizes, layers, micro_batch: int, itemsize: int = 4) -> int:
    """Bytes one micro-batch leaves on a stage until its backward: the stage's input and each layer's output."""
    return micro_batch * itemsize * (sizes[layers[0]] + sum(sizes[l + 1] for l in layers))


# ---- One stage's math: the serial-blas trainer's kernels, on this stage's layers only --------------------


class Stage:
    """Layers ``layers`` of a network (float32), forward and backward per micro-batch, gradients summed
    over the micro-batches of a minibatch and applied once by ``update``.

    Between stages travels dL/dA: stage s + 1 sends Δ W_firstᵀ for its first layer, stage s multiplies
    by σ' of its output, exactly the serial trainer's ``(Δ_l W_lᵀ)∘σ'`` split across the boundary."""

    def __init__(self, params, first: bool, last: bool):
        self.W, self.b = ([np.ascontiguousarray(a, np.float32) for a in arrays] for arrays in zip(*params))
        self.first, self.last = first, last
        self.gW, self.gb = [np.zeros_like(W) for W in self.W], [np.zeros_like(b) for b in self.b]
        self.fresh = True  # no gradient summed yet this minibatch: the first product overwrites gW

    @property
    def params(self):
        return [(W.copy(), b.copy()) for W, b in zip(self.W, self.b)]

    def forward(self, x) -> list[np.ndarray]:
        """[input, output of each layer]: what the backward of this micro-batch needs."""
        acts = [x]
        for W, b in zip(self.W, self.b):
            z = np.empty((x.shape[0], W.shape[1]), np.float32)
            blas.gemm_into(acts[-1], W, z)
            cpu.bias_sigmoid(z, b)
            acts.append(z)
        return acts

    def output_delta(self, out, Y, B: int) -> tuple[float, np.ndarray]:
        """The last stage: Σ(A − Y)² of this micro-batch and Δ_L = 2/B (A − Y)∘σ' (the whole minibatch's mean)."""
        delta = np.empty_like(out)
        return float(cpu.output_delta(out, np.ascontiguousarray(Y, np.float32), delta, np.float32(2.0 / B))), delta

    def backward(self, acts, delta) -> np.ndarray | None:
        """Accumulate this micro-batch's weight gradients from Δ of the stage's last layer; return
        dL/d(input) for the stage before (None on the first stage, which has nobody to send it to)."""
        minus_one = np.float32(-1.0)  # gemm_update computes W − lr·AᵀΔ: lr = −1 accumulates
        fresh, self.fresh = self.fresh, False
        for l in range(len(self.W) - 1, -1, -1):
            if fresh:
                blas.gemm_into(acts[l], delta, self.gW[l], trans_a=True)
                cpu.column_sums(delta, self.gb[l])
            else:
                blas.gemm_update(acts[l], delta, self.gW[l], minus_one)
                cpu.bias_update(self.gb[l], delta, minus_one)
            if l == 0 and self.first:
                return None
            below = np.empty((delta.shape[0], self.W[l].shape[0]), np.float32)
            blas.gemm_into(delta, self.W[l], below, trans_b=True)
            if l == 0:
                return below  # the stage before applies σ' of its own output
            cpu.hidden_delta(below, acts[l])
            delta = below

    def input_delta(self, grad_out, out) -> np.ndarray:
        """Δ of this stage's last layer from dL/d(output) sent by the next stage: grad∘σ'(output)."""
        cpu.hidden_delta(grad_out, out)
        return grad_out

    def update(self, lr: float) -> None:
        lr = np.float32(lr)
        for W, b, gW, gb in zip(self.W, self.b, self.gW, self.gb):
            blas.axpy(W, gW, lr)
            b -= lr * gb
        self.fresh = True
