"""One training loop for every trainer: seeded shuffles, minibatch SGD, evaluation, a pandas history."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .base import Trainer


def predict_labels(trainer: Trainer, X: np.ndarray, batch_size: int = 10_000) -> np.ndarray:
    """Class predictions: argmax of the outputs, or output > 0.5 for a single (binary) unit."""
    out = np.concatenate([trainer.predict(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    return (out[:, 0] > 0.5).astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)


def accuracy(trainer: Trainer, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict_labels(trainer, X) == y)) if len(y) else float("nan")


def mse(trainer: Trainer, X: np.ndarray, Y: np.ndarray, batch_size: int = 10_000) -> float:
    """The study's loss, 1/N Σ ||y - f(x)||², over a whole split."""
    total = 0.0
    for i in range(0, len(X), batch_size):
        err = trainer.predict(X[i:i + batch_size]).astype(np.float64) - Y[i:i + batch_size]
        total += float(np.sum(err * err))
    return total / max(len(X), 1)


def minibatches(n: int, batch_size: int, rng: np.random.Generator):
    """Index arrays of one epoch's minibatches, in a fresh random order (the last one may be short)."""
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def fit(trainer: Trainer, dataset, epochs: int, batch_size: int, lr: float, lr_decay: float = 0.0,
        seed: int = 0, progress: bool = True, eval_train: bool = True) -> pd.DataFrame:
    """Train ``trainer`` on ``dataset`` with minibatch SGD and return the per-epoch history.

    The learning rate of epoch e (from 0) is ``lr * (1 - lr_decay) ** e`` (seed 003 decays it 1% per epoch).
    ``seconds`` is the training time of the epoch alone; evaluation is not counted.
    Row 0 is the untrained network, so every curve starts at the same point for every trainer.
    """
    if epochs < 0 or batch_size <= 0:
        raise ValueError(f"epochs must be >= 0 and batch_size > 0, got epochs={epochs}, batch_size={batch_size}")
    if not 0.0 <= lr_decay < 1.0:
        raise ValueError(f"lr_decay must be in [0, 1), got {lr_decay}")
    if (trainer.n_in, trainer.n_out) != (dataset.n_in, dataset.n_out):
        raise ValueError(f"trainer is {trainer.n_in}->{trainer.n_out} but dataset {dataset.name} is "
                         f"{dataset.n_in}->{dataset.n_out}")
    rng = np.random.default_rng(seed)
    X, Y = dataset.X_train, dataset.Y_train
    history = [_evaluate(trainer, dataset, 0, float("nan"), 0.0, lr, eval_train)]
    bar = tqdm(total=epochs * -(-len(X) // batch_size), disable=not progress, unit="step", leave=False)
    for epoch in range(1, epochs + 1):
        lr_epoch = lr * (1.0 - lr_decay) ** (epoch - 1)
        losses = []
        start = time.perf_counter()
        for idx in minibatches(len(X), batch_size, rng):
            losses.append(trainer.step(X[idx], Y[idx], lr_epoch))
            bar.update()
        seconds = time.perf_counter() - start
        history.append(_evaluate(trainer, dataset, epoch, float(np.mean(losses)), seconds, lr_epoch, eval_train))
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", val_acc=f"{history[-1]['val_acc']:.4f}")
    bar.close()
    return pd.DataFrame(history)


def _evaluate(trainer, ds, epoch, train_loss, seconds, lr, eval_train) -> dict:
    """One history row. ``loss`` is the mean minibatch loss of the epoch (row 0: the full train loss)."""
    if epoch == 0:
        train_loss = mse(trainer, ds.X_train, ds.Y_train)
    return {
        "epoch": epoch,
        "loss": train_loss,
        "val_loss": mse(trainer, ds.X_val, ds.Y_val),
        "train_acc": accuracy(trainer, ds.X_train, ds.y_train) if eval_train else float("nan"),
        "val_acc": accuracy(trainer, ds.X_val, ds.y_val),
        "test_acc": accuracy(trainer, ds.X_test, ds.y_test),
        "seconds": seconds,
        "lr": lr,
    }


def main(argv=None) -> int:
    """``python -m parbp.train --impl numpy --net 1h --dataset mnist --epochs 5 --batch-size 100 --lr 0.1``"""
    import argparse

    from . import data, trainers

    p = argparse.ArgumentParser(prog="python -m parbp.train", description="Train one trainer and print its history.")
    p.add_argument("--impl", default="numpy", choices=trainers.names())
    p.add_argument("--net", default="1h", help="1h, 2h or comma-separated hidden widths")
    p.add_argument("--dataset", default="mnist", choices=data.NAMES)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-decay", type=float, default=0.0)
    p.add_argument("--threads", type=int, help="for trainers that take a threads option")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the history as CSV here")
    args = p.parse_args(argv)
    net = args.net if args.net in ("1h", "2h") else [int(w) for w in args.net.split(",")]
    ds = data.load(args.dataset)
    options = {} if args.threads is None else {"threads": args.threads}
    with trainers.get(args.impl)(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=args.seed, **options) as t:
        history = fit(t, ds, args.epochs, args.batch_size, args.lr, args.lr_decay, args.seed)
    print(f"{t!r} on {ds.name}, batch {args.batch_size}, lr {args.lr}")
    print(history.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        from .results import write_csv

        write_csv(history, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
