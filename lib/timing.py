"""Timing code side by side: every candidate sampled in each round, so a slow stretch of a shared
machine hits all of them alike and their ratios stay honest."""
from __future__ import annotations

import math
import time


def sample(fn, calls: int) -> float:
    """Seconds per call of ``calls`` calls of ``fn``."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


#: a fn past its time budget still gets this many samples: enough rounds to judge a ratio on its spread
MIN_SAMPLES = 5


def side_by_side(fns: list, rounds: int, warmup: int = 1, min_sample_s: float = 0.02, rewarm_s: float = 0.0,
                 max_s: float = math.inf) -> list[list[float]]:
    """Seconds per call of each fn: warm each up, then ``rounds`` interleaved rounds of one sample each (at
    least ``min_sample_s`` of calls). Before each sample the fn runs untimed for ``rewarm_s``, so the idle BLAS
    threads of the one before (they spin ~0.1 s) sleep and its own wake. A fn stops after ``MIN_SAMPLES``
    samples once it has taken ``max_s`` seconds."""
    calls = [max(1, math.ceil(min_sample_s / max(min(sample(fn, 1) for _ in range(max(1, warmup))), 1e-9)))
             for fn in fns]
    samples, spent = [[] for _ in fns], [0.0] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            if len(samples[i]) >= MIN_SAMPLES and spent[i] > max_s:
                continue
            if len(fns) > 1:  # one untimed call at least, more until rewarm_s has passed
                start = time.perf_counter()
                fn()
                while time.perf_counter() - start < rewarm_s:
                    fn()
            samples[i].append(sample(fn, calls[i]))
            spent[i] += samples[i][-1] * calls[i]
    return samples
