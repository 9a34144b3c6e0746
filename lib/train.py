"""One training loop for every trainer: seeded shuffles, minibatch SGD, evaluation, a pandas history."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import checkpoint as ckpt, data, trainers
from .base import Trainer
from .cli import Parser, fraction, net, nonnegative_int, positive_float, positive_int, run
from .results import write_csv


def accuracy(trainer: Trainer, X: np.ndarray, y: np.ndarray, batch_size: int = 10_000) -> float:
    """The fraction of ``y`` predicted: argmax of the outputs, or output > 0.5 for a single (binary) unit."""
    if not len(y):
        return float("nan")
    out = np.concatenate([trainer.predict(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    return float(np.mean(data.Dataset.labels(out) == y))


def mse(trainer: Trainer, X: np.ndarray, Y: np.ndarray, batch_size: int = 10_000) -> float:
    """The study's loss, 1/N Σ ||y - f(x)||², over a whole split."""
    return sum(float(np.sum((trainer.predict(X[i:i + batch_size]).astype(np.float64) - Y[i:i + batch_size]) ** 2))
               for i in range(0, len(X), batch_size)) / max(len(X), 1)


def evaluate(trainer: Trainer, X: np.ndarray, Y: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(MSE loss, accuracy) over a whole split."""
    return mse(trainer, X, Y), accuracy(trainer, X, y)


HISTORY = ("epoch", "train_loss", "val_loss", "val_acc", "seconds")


def history_row(epoch: int, train_loss: float, val_loss: float, val_acc: float, seconds: float, **more) -> dict:
    """One epoch of any training loop (serial ``fit``, the MPI modes, the engines): the columns every history
    shares (``HISTORY``: the mean minibatch loss, the validation split's, the epoch's training seconds without
    evaluation), then the loop's own. Row 0 is the untrained network."""
    return dict(zip(HISTORY, (epoch, train_loss, val_loss, val_acc, seconds)), **more)


def minibatches(order: np.ndarray, batch_size: int, drop_last: bool = False) -> list[np.ndarray]:
    """``order`` cut into minibatches of ``batch_size`` indices. The serial loop keeps a short last one;
    data parallelism drops it (``drop_last``), so every step splits the same number of examples."""
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def shuffled_batches(dataset, epochs: int, batch_size: int, seed: int = 0):
    """(X, Y) of every minibatch of ``epochs`` epochs in ``fit``'s order: one seeded RNG, a fresh shuffle
    each epoch."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for idx in minibatches(rng.permutation(len(dataset.X_train)), batch_size):
            yield dataset.X_train[idx], dataset.Y_train[idx]


def lr_at(lr: float, decay: float, epoch: int) -> float:
    """Seed 003's schedule: the rate of epoch ``epoch`` (from 0) after shrinking by ``decay`` each epoch."""
    return lr * (1.0 - decay) ** epoch


def fit(trainer: Trainer, dataset, epochs: int, batch_size: int, lr: float, lr_decay: float = 0.0,
        seed: int = 0, progress: bool = True, eval_train: bool = True, checkpoint=None,
        resume: bool = False) -> pd.DataFrame:
    """Train ``trainer`` on ``dataset`` with minibatch SGD (epoch e at ``lr_at(lr, lr_decay, e)``) and return the
    per-epoch history: row 0 is the untrained network; ``seconds`` is the epoch's training alone.

    ``checkpoint``: a path written atomically after every epoch (``parbp.checkpoint``: parameters, history,
    epoch, the shuffle's RNG). ``resume=True`` continues from it if it exists; a checkpoint of another run is
    refused, naming what differs, and without ``resume`` an existing one is never overwritten
    (FileExistsError). Resumed, a deterministic trainer (all but ``hogwild``) ends bit for bit as an
    uninterrupted run.
    """
    if epochs < 0 or batch_size <= 0:
        raise ValueError(f"epochs must be >= 0 and batch_size > 0, got epochs={epochs}, batch_size={batch_size}")
    if not 0.0 <= lr_decay < 1.0:
        raise ValueError(f"lr_decay must be in [0, 1), got {lr_decay}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if (trainer.n_in, trainer.n_out) != (dataset.n_in, dataset.n_out):
        raise ValueError(f"trainer is {trainer.n_in}->{trainer.n_out} but dataset {dataset.name} is "
                         f"{dataset.n_in}->{dataset.n_out}")
    rng = np.random.default_rng(seed)
    X, Y = dataset.X_train, dataset.Y_train
    history, done = None, 0
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        # what a checkpoint must agree on to be resumed by this run (the epoch count may grow)
        identity = {"trainer": trainer.name, "sizes": list(trainer.sizes), "dtype": str(trainer.dtype),
                    "options": dict(trainer.opts), "init_seed": trainer.seed, "dataset": ckpt.data_fingerprint(dataset),
                    "batch_size": batch_size, "lr": lr, "lr_decay": lr_decay, "seed": seed, "eval_train": eval_train}
        if checkpoint.exists():
            if not resume:
                raise FileExistsError(f"checkpoint {checkpoint} exists; resume it (resume=True, --resume) "
                                      f"or delete it to start over")
            trainer_params, state = ckpt.load(checkpoint)
            ckpt.check_identity(state, identity, checkpoint)
            if (done := state["epoch"]) > epochs:
                raise ValueError(f"checkpoint {checkpoint} is at epoch {done}, beyond the {epochs} epochs asked for")
            trainer.params, history, rng = trainer_params, state["history"], ckpt.rng_from_state(state["rng"])
    history = history or [_evaluate(trainer, dataset, 0, float("nan"), 0.0, lr, eval_train)]
    steps_per_epoch = -(-len(X) // batch_size)
    bar = tqdm(total=epochs * steps_per_epoch, initial=done * steps_per_epoch, disable=not progress,
               unit="step", leave=False)
    for epoch in range(done + 1, epochs + 1):
        lr_epoch = lr_at(lr, lr_decay, epoch - 1)
        losses = []
        start = time.perf_counter()
        for idx in minibatches(rng.permutation(len(X)), batch_size):
            losses.append(trainer.step(X[idx], Y[idx], lr_epoch))
            bar.update()
        seconds = time.perf_counter() - start
        history.append(_evaluate(trainer, dataset, epoch, float(np.mean(losses)), seconds, lr_epoch, eval_train))
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.4f}", val_acc=f"{history[-1]['val_acc']:.4f}")
        if checkpoint is not None:
            ckpt.save(checkpoint, trainer.params, {"identity": identity, "epoch": epoch, "history": history,
                                                   "rng": rng.bit_generator.state})
    bar.close()
    return pd.DataFrame(history)


def _evaluate(trainer, ds, epoch, train_loss, seconds, lr, eval_train) -> dict:
    """One history row (row 0's train loss: the whole training split's), with train and test accuracy."""
    if epoch == 0:
        train_loss = mse(trainer, ds.X_train, ds.Y_train)
    return history_row(epoch, train_loss, *evaluate(trainer, ds.X_val, ds.Y_val, ds.y_val), seconds,
                       train_acc=accuracy(trainer, ds.X_train, ds.y_train) if eval_train else float("nan"),
                       test_acc=accuracy(trainer, ds.X_test, ds.y_test), lr=lr)


def main(argv=None) -> int:
    """``python -m parbp.train --impl numpy --net 1h --dataset mnist --epochs 5 --batch-size 100 --lr 0.1``"""
    p = Parser(prog="python -m parbp.train", description="Train one trainer and print its history.")
    p.add_argument("--impl", default="numpy", choices=trainers.names())
    p.add_argument("--net", default="1h", type=net, help="1h, 2h or comma-separated hidden widths")
    p.add_argument("--dataset", default="mnist", choices=data.NAMES)
    p.add_argument("--epochs", type=nonnegative_int, default=5)
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--lr", type=positive_float, default=0.1)
    p.add_argument("--lr-decay", type=fraction, default=0.0, help="the lr shrinks by this fraction each epoch")
    p.add_argument("--threads", type=positive_int, help="for trainers that take a threads option")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=positive_int, help="train on the first N training examples only")
    p.add_argument("--out", help="write the history as CSV here")
    p.add_argument("--checkpoint", help="write the run's state here after every epoch (atomically)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    args = p.parse_args(argv)
    T = trainers.get(args.impl)
    if args.threads is not None and "threads" not in T.options:
        p.error(f"--threads: trainer {args.impl!r} takes no threads option; trainers that do: "
                f"{', '.join(n for n in trainers.names() if 'threads' in trainers.get(n).options)}")
    ds = data.load_first(args.dataset, args.subset)
    options = {} if args.threads is None else {"threads": args.threads}
    with T(net=args.net, n_in=ds.n_in, n_out=ds.n_out, seed=args.seed, **options) as t:
        history = fit(t, ds, args.epochs, args.batch_size, args.lr, args.lr_decay, args.seed,
                      checkpoint=args.checkpoint, resume=args.resume)
    print(f"{t!r} on {ds.name}, batch {args.batch_size}, lr {args.lr}")
    print(history.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        write_csv(history, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, prog="python -m parbp.train"))
