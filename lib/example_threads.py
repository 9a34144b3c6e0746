"""Seed 000's "threads ≈ 10×", like for like: the paper's own design timed against its own serial loop.

Both sides run seed 001's per-example algorithm (``cpu.example_gradients``: matrix-vector products, one
example at a time), so nothing but the cores differs:

    serial     one thread over the whole minibatch, then the update (the ``serial-example`` trainer's step)
    threads    the minibatch split into p contiguous parts, one thread per part, each into its own gradient
               accumulators (numba releases the GIL); then the p partial gradients summed and one update

Rounds are interleaved (serial, threads, serial, ...); each round's ratio serial/threads is one sample, and
the speedup is their median with the min-max spread. The seed's core count is not stated, so its 10× is
projected, not measured: at our per-thread efficiency, how many cores 10× would take.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from . import envinfo, nets
from .cpu import example_by_example_step, example_gradients, split_rows
from .data import random_batch
from .timing import sample

CSV = "03_example_threads.csv"


class Loops:
    """The weights and, per thread, the accumulators and one example's vectors."""

    def __init__(self, sizes, threads: int, seed: int = 0):
        params = nets.init_params(sizes, seed)
        self.W = tuple(np.ascontiguousarray(W, dtype=np.float32) for W, _ in params)
        self.b = tuple(np.ascontiguousarray(b, dtype=np.float32) for _, b in params)
        self.buffers = [(tuple(np.zeros_like(W) for W in self.W), tuple(np.zeros_like(b) for b in self.b),
                         tuple(np.zeros(n, np.float32) for n in sizes), tuple(np.zeros(n, np.float32) for n in sizes[1:]))
                        for _ in range(threads)]
        self.pool = ThreadPoolExecutor(threads)

    def serial(self, X, Y, lr):
        return example_by_example_step(self.W, self.b, *self.buffers[0], X, Y, np.float32(lr), np.float32(2.0 / len(X)))

    def threaded(self, X, Y, lr):
        scale = np.float32(2.0 / len(X))
        parts = split_rows(len(X), len(self.buffers))
        sse = sum(self.pool.map(lambda k: example_gradients(self.W, self.b, *self.buffers[k], X[slice(*parts[k])],
                                                            Y[slice(*parts[k])], scale), range(len(parts))))
        for l, (W, b) in enumerate(zip(self.W, self.b)):  # the partial gradients summed, then one update
            W -= np.float32(lr) * sum(buf[0][l] for buf in self.buffers[:len(parts)])
            b -= np.float32(lr) * sum(buf[1][l] for buf in self.buffers[:len(parts)])
        return sse


def measure(net: str = "2h", batch: int = 1000, threads: int = 2, rounds: int = 5, steps: int = 2,
            seed: int = 0) -> pd.DataFrame:
    """One row per round: seconds per step of each side and their ratio (random inputs: the per-example
    loops do the same arithmetic whatever the values)."""
    X, Y = random_batch(784, 10, batch, seed)
    loops = Loops(nets.layer_sizes(net, 784, 10), threads, seed)
    loops.serial(X[:2], Y[:2], 0.0), loops.threaded(X[:2 * threads], Y[:2 * threads], 0.0)  # compile
    rows = []
    for r in range(rounds):
        t = {side: sample(lambda: getattr(loops, side)(X, Y, 0.01), steps) for side in ("serial", "threaded")}
        rows.append({"round": r, "net": net, "batch": batch, "threads": threads, "s_serial": t["serial"],
                     "s_threads": t["threaded"], "speedup": t["serial"] / t["threaded"],
                     "loadavg": os.getloadavg()[0], "cpu": envinfo.cpu_name(), "cores": os.cpu_count(),
                     "blas": "none (numba matrix-vector loops)"})
    loops.pool.shutdown()
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, target: float = 10.0) -> dict:
    """The median speedup with its spread, the per-thread efficiency, and the cores ``target`` would take
    at that efficiency (a projection: it assumes the efficiency holds, which memory bandwidth may not allow)."""
    s, p = df.speedup, int(df.threads.iloc[0])
    eff = s.median() / p
    return {"speedup": s.median(), "lo": s.min(), "hi": s.max(), "rounds": len(s), "threads": p,
            "efficiency": eff, "cores_for_target": target / eff}


def main(argv=None):
    from . import cli, results
    ap = cli.Parser(prog="python -m parbp.example_threads", description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="2h", choices=["1h", "2h"])
    ap.add_argument("--batch", type=cli.positive_int, default=1000)
    ap.add_argument("--threads", type=cli.positive_int, default=2)
    ap.add_argument("--rounds", type=cli.positive_int, default=5)
    ap.add_argument("--out", default=str(results.FIGURES / CSV))
    args = ap.parse_args(argv)
    df = measure(args.net, args.batch, args.threads, args.rounds)
    results.write_csv(df, args.out)
    s = summary(df)
    print(df[["round", "s_serial", "s_threads", "speedup", "loadavg"]].round(4).to_string(index=False))
    print(f"{args.net}, batch {args.batch}, {s['threads']} threads on {df.cpu.iloc[0]} ({df.cores.iloc[0]} cores): "
          f"speedup {s['speedup']:.2f}x (min {s['lo']:.2f}, max {s['hi']:.2f}, {s['rounds']} rounds), "
          f"efficiency {s['efficiency']:.2f}; 10x would take {s['cores_for_target']:.1f} cores at that efficiency "
          f"(projection) -> {args.out}")


if __name__ == "__main__":
    import sys

    from .cli import run

    sys.exit(run(main, prog="python -m parbp.example_threads"))
