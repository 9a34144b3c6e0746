"""Seed 004's two proposals under a memory budget per worker.

1. **SGD on the largest subset that fits, against data parallelism on all the data.** A worker holds its
   training examples (784 + 10 float32 each) and its trainer's footprint (``parbp.memory.footprint``). The
   largest subset that fits one budget is trained by serial SGD; data parallelism gives each of W workers a
   shard that fits, W = ceil(examples / subset), and all-reduces their gradients each step, which is serial
   SGD on all the data at the same global batch (notebook 06: equal up to the order of a float sum). So its
   learning curve is computed here in one process; its wall-clock on W cores is not measured (2 cores here):
   the one-process time is reported as an upper bound.
2. **A network that does not fit one worker's budget, trained by model parallelism.** Its serial footprint
   exceeds the budget; its layers are split into stages (``parbp.pipeline.split_layers``) whose footprint
   (weights, the stage's summed gradients, the activations and deltas it keeps) each fits; the stages
   (``parbp.pipeline.Stage``) then train it, forward through every stage and backward through them again,
   at each rate of a small grid, the one with the best validation accuracy judged (the paper chose its rates
   by grid search).

``python -m parbp.seed004`` writes figures/07_seed004_subset.csv (one row per method, seed and epoch) and
figures/07_seed004_too_big.csv (one row per rate and epoch of the big network).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
import pandas as pd

from . import envinfo, memory, nets, pipeline, train, trainers

MIB = 2**20
BIG = [1024, 1024, 1024]  # hidden widths of the network too big for one budget (at the default budget)


def example_bytes(ds) -> int:
    return (ds.X_train.shape[1] + ds.Y_train.shape[1]) * 4


def largest_subset(ds, budget: int, net="1h", batch: int = 100) -> int:
    """The most training examples one worker holds within ``budget`` bytes beside serial-blas's footprint."""
    sizes = nets.layer_sizes(net, ds.n_in, ds.n_out)
    room = budget - memory.footprint_bytes("serial-blas", sizes, batch)
    if room < example_bytes(ds) * batch:
        raise ValueError(f"a budget of {budget / MIB:g} MiB leaves room for fewer than one minibatch; raise --budget-mib")
    return min(len(ds.X_train), room // example_bytes(ds))


def subset_vs_data_parallel(ds, budget: int, epochs: int, seeds, lr: float = 0.1, batch: int = 100) -> pd.DataFrame:
    n_fit = largest_subset(ds, budget, batch=batch)
    workers = math.ceil(len(ds.X_train) / n_fit)
    subset = dataclasses.replace(ds, X_train=ds.X_train[:n_fit], Y_train=ds.Y_train[:n_fit])
    rows = []
    for seed in seeds:
        for method, data, w in (("subset SGD", subset, 1), ("data parallel", ds, workers)):
            h = train.fit(trainers.make("serial-blas", net="1h", n_in=ds.n_in, n_out=ds.n_out, seed=seed), data,
                          epochs, batch, lr, seed=seed, progress=False, eval_train=False)
            rows.append(h.assign(method=method, seed=seed, examples=len(data.X_train), workers=w,
                                 budget_mib=budget / MIB, elapsed_s=h.seconds.cumsum(), loadavg=os.getloadavg()[0]))
    return pd.DataFrame(rows and pd.concat(rows, ignore_index=True)).assign(cpu=envinfo.cpu_name())


def stage_bytes(sizes, layers, batch: int) -> int:
    """A stage's footprint: its weights and their summed gradients, and its micro-batch's activations and deltas."""
    params = sum(sizes[l] * sizes[l + 1] + sizes[l + 1] for l in layers)
    return 2 * 4 * params + 2 * pipeline.activation_bytes(sizes, layers, batch)


def too_big(ds, budget: int, epochs: int, hidden=BIG, lr: float = 0.5, batch: int = 100, seed: int = 0) -> pd.DataFrame:
    sizes = nets.layer_sizes(list(hidden), ds.n_in, ds.n_out)
    one = memory.footprint_bytes("serial-blas", sizes, batch)
    if one <= budget:
        raise ValueError(f"the network {sizes} fits {budget / MIB:g} MiB; lower --budget-mib or widen --big")
    splits = (pipeline.split_layers(sizes, p) for p in range(2, len(sizes)))  # the fewest stages that each fit
    split = next((s for s in splits if max(stage_bytes(sizes, ls, batch) for ls in s) <= budget), None)
    if split is None:
        raise ValueError(f"no split of {sizes} into stages fits {budget / MIB:g} MiB a stage; raise --budget-mib")
    params = nets.init_params(sizes, seed)
    parts = [pipeline.Stage([params[l] for l in ls], first=k == 0, last=k == len(split) - 1) for k, ls in enumerate(split)]

    def forward(X):
        acts = []
        for s in parts:
            acts.append(s.forward(X if not acts else acts[-1][-1]))
        return acts

    rng, rows, elapsed = np.random.default_rng(seed), [], 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for idx in train.minibatches(rng.permutation(len(ds.X_train)), batch):
            acts = forward(ds.X_train[idx])
            _, delta = parts[-1].output_delta(acts[-1][-1], ds.Y_train[idx], len(idx))
            for k in range(len(parts) - 1, -1, -1):
                grad = parts[k].backward(acts[k], delta)
                if k:
                    delta = parts[k - 1].input_delta(grad, acts[k - 1][-1])
            for s in parts:
                s.update(lr)
        elapsed += time.perf_counter() - start
        accuracy = {name: float((np.concatenate([forward(X[i:i + 5000])[-1][-1] for i in range(0, len(X), 5000)])
                                 .argmax(1) == Y.argmax(1)).mean())
                    for name, X, Y in (("val_acc", ds.X_val, ds.Y_val), ("test_acc", ds.X_test, ds.Y_test))}
        rows.append({"net": "-".join(map(str, sizes)), "budget_mib": budget / MIB, "one_worker_mib": one / MIB,
                     "stages": len(split), "split": str(split),
                     "stage_mib_max": max(stage_bytes(sizes, ls, batch) for ls in split) / MIB, "batch": batch,
                     "lr": lr, "epoch": epoch, "elapsed_s": elapsed, **accuracy,
                     "loadavg": os.getloadavg()[0], "cpu": envinfo.cpu_name()})
    return pd.DataFrame(rows)


def main(argv=None):
    from . import cli, data, results
    ap = cli.Parser(prog="python -m parbp.seed004", description=__doc__.splitlines()[0])
    ap.add_argument("--budget-mib", type=cli.positive_float, default=12.0)
    ap.add_argument("--epochs", type=cli.positive_int, default=5)
    ap.add_argument("--seeds", type=cli.nonnegative_int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--big-epochs", type=cli.positive_int, default=20)
    ap.add_argument("--big-lr", type=cli.positive_float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    ap.add_argument("--parts", nargs="+", choices=["subset", "too-big"], default=["subset", "too-big"])
    ap.add_argument("--out", default=str(results.FIGURES))
    args = ap.parse_args(argv)
    ds = data.load("mnist")
    budget = int(args.budget_mib * MIB)
    if "subset" in args.parts:
        sub = subset_vs_data_parallel(ds, budget, args.epochs, args.seeds)
        results.write_csv(sub, f"{args.out}/07_seed004_subset.csv")
        end = sub[sub.epoch == sub.epoch.max()].groupby("method")[["examples", "workers", "test_acc", "elapsed_s"]]
        print(end.agg(["mean", "min", "max"]).to_string())
    if "too-big" in args.parts:
        big = pd.concat([too_big(ds, budget, args.big_epochs, lr=lr) for lr in args.big_lr], ignore_index=True)
        results.write_csv(big, f"{args.out}/07_seed004_too_big.csv")
        print(big.drop(columns=["cpu"]).to_string(index=False))


if __name__ == "__main__":
    import sys

    from .cli import run

    sys.exit(run(main, prog="python -m parbp.seed004"))
