"""What every distributed scheme shares (MPI ranks, ipyparallel engines, the relay): the per-rank epoch
order and its minibatches, parameters and gradients as one flat buffer, the synchronous data-parallel step,
and running a job under mpiexec."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from .cli import check_positive_int, net as net_type, positive_int
from .data import NAMES, TOY
from .train import minibatches


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The shuffled example order of one epoch: a function of (seed, epoch) alone, so every rank, a
    resumed run and the serial check draw the same one."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class Flat:
    """Offsets of every W and b of a network inside one contiguous vector (+ ``extra`` scalars at the end):
    one message per exchange instead of one per array."""

    def __init__(self, sizes, dtype, extra: int = 0):
        self.shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
        self.counts = [int(np.prod(s)) for s in self.shapes]
        self.n, self.extra, self.dtype = sum(self.counts), extra, np.dtype(dtype)
        self.ends = np.cumsum(self.counts)  # where each array ends in the buffer, for views on every step

    def empty(self) -> np.ndarray:
        return np.zeros(self.n + self.extra, dtype=self.dtype)

    def views(self, buf):
        """[(W, b), ...] as views into ``buf``: unpacking costs nothing."""
        arrays = [a.reshape(s) for a, s in zip(np.split(buf, self.ends), self.shapes)]
        return list(zip(arrays[0::2], arrays[1::2]))

    def pack(self, pairs, buf, scale=1.0) -> np.ndarray:
        """[(W, b), ...] times ``scale`` into ``buf`` (x · 1.0 is exactly x: a plain copy)."""
        for (W, b), (vW, vb) in zip(pairs, self.views(buf)):
            np.multiply(W, scale, out=vW)
            np.multiply(b, scale, out=vb)
        return buf


class PackedGradients:
    """A trainer's gradients and its loss in one flat buffer: one message per step. ``views`` are the
    gradients inside it, so a reduced buffer is applied in place."""

    def __init__(self, trainer):
        self.flat = Flat(trainer.sizes, trainer.dtype, extra=1)  # the extra slot carries the loss
        self.buf = self.flat.empty()
        self.views = self.flat.views(self.buf)

    def pack(self, loss, grads, weight: float) -> np.ndarray:
        """This slice's share of the minibatch's mean: gradients and loss times ``weight`` = B_r / B."""
        self.flat.pack(grads, self.buf, scale=weight)
        self.buf[-1] = loss * weight  # the loss rides along in the same message
        return self.buf


def allreduce_step(trainer, packed: PackedGradients, X, Y, B, lr, comm, dog) -> float:
    """One synchronous data-parallel step on this rank's slice (X, Y) of a B-example minibatch;
    returns the loss of the whole minibatch. ``dog.wait(what)`` times the blocking call."""
    from mpi4py import MPI

    loss, g = trainer.gradients(X, Y)
    buf = packed.pack(loss, g, len(X) / B)  # the mean over B examples = Σ_r (B_r/B) · mean over the slice
    with dog.wait("Allreduce of the gradients"):
        comm.Allreduce(MPI.IN_PLACE, buf)
    trainer.apply_gradients(packed.views, lr)
    return float(buf[-1])


def epoch_batches(n: int, epoch: int, seed: int, batch_size: int):
    """The full minibatches of one epoch over ``n`` examples, in ``epoch_order``."""
    return minibatches(epoch_order(n, epoch, seed), batch_size, drop_last=True)


def block(steps, first: int = 0, count: int | None = None):
    """Steps ``first`` .. ``first + count - 1`` of ``steps`` (count None: to the end)."""
    return islice(steps, first, None if count is None else first + count)


def leading(df, columns: dict):
    """``df`` with ``columns`` (name -> one value for every row) inserted as its first columns."""
    for i, (k, v) in enumerate(columns.items()):
        df.insert(i, k, [v] * len(df))
    return df


def mpiexec() -> str:
    """The mpiexec next to this Python (the pip ``mpich`` package puts it in the venv's bin/)."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("mpiexec not found next to this Python nor on PATH; pip install mpich")
    return found


def genv(env: dict) -> list[str]:
    """mpiexec's ``-genv NAME VALUE`` for each variable: set on every rank."""
    return [a for k, v in env.items() for a in ("-genv", k, v)]


def run_job(module: str, processes: int, args: list[str], timeout: float, out=None, explain=lambda output: "",
            env: dict | None = None):
    """Run ``mpiexec -n processes python -m module ARGS --out CSV`` (``env``: variables for every rank) and
    return the CSV its rank 0 wrote as a DataFrame. A job that fails or outlives ``timeout`` seconds raises
    RuntimeError with the tail of its output (``explain(output)`` may add which rank died: mpiexec names only
    a pid)."""
    check_positive_int("processes", processes)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(out) if out else Path(tmp) / "run.csv"
        run_command([mpiexec(), "-n", str(processes), *genv(env or {}), sys.executable, "-m", module, *args,
                     "--out", str(csv)], timeout, f"mpiexec -n {processes} {' '.join([module, *args[:2]])}", explain)
        return pd.read_csv(csv)


def data_arguments(p, net: str = "2h", batch_size: int = 1000, batch_help: str | None = None):
    """--net, --dataset, --subset and --batch-size: what every command that trains on a dataset takes."""
    p.add_argument("--net", default=net, type=net_type, help='"1h", "2h" or hidden widths like 64,32')
    p.add_argument("--dataset", default="mnist", choices=(*NAMES, TOY), help=f'"{TOY}" is synthetic')
    p.add_argument("--subset", type=positive_int, default=None, help="use only the first N training examples")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=batch_help)


def flags(options: dict) -> list[str]:
    """Keyword options as command-line flags: ``batch_size=100`` -> ``--batch-size 100``, a list joined by
    commas, ``True`` a switch (``whole_data=True`` -> ``--whole-data``), None and False left out."""
    out = []
    for k, v in options.items():
        flag = f"--{k.replace('_', '-')}"
        if v is True:
            out.append(flag)
        elif v is not None and v is not False:
            out += [flag, ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    return out


def run_command(cmd, timeout, what: str, explain=lambda output: ""):
    """subprocess.run with a timeout that kills the whole process group (mpiexec and all its ranks); a
    command that fails raises RuntimeError naming ``what``, with the tail of its output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RuntimeError(f"{' '.join(map(str, cmd))} did not finish within {timeout} s; killed it.\n{err[-3000:]}")
    if proc.returncode != 0:
        # mpiexec reports a dead rank on stdout ("BAD TERMINATION ..."), our ranks on stderr
        raise RuntimeError(f"{what} failed (exit {proc.returncode}){explain(out + err)}:\n{err[-3000:]}{out[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
