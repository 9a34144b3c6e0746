"""Library baselines: the study's network, loss and SGD step written the way a user of each library would.

    torch      idiomatic PyTorch: nn.Sequential of nn.Linear + nn.Sigmoid, autograd, torch.optim.SGD.
               This is the comparator the speed goals are measured against (the "÷torch" column), so it
               is deliberately what a researcher would write, not a hand-fused kernel.
    pytensor   one compiled graph (Theano API): forward, MSE, T.grad, in-place updates of shared variables.
    theano     the very same graph code under Theano itself (theano-pymc 1.1.2, the library the paper
               compared against), run out of process in its own numpy-1.23 venv (see theano_worker.py).

All three start from ``parbp.nets.init_params`` and minimize L = 1/B Σ ||y - a||² with W -= lr dL/dW,
so one step of each equals one step of ``parbp.reference`` up to rounding (tests/test_baselines.py).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import select
import subprocess
import tempfile
import warnings
import weakref
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from . import theano_worker
from .base import Trainer, TrainerUnavailable
from .cli import check_choice, check_positive_int
from .results import ROOT as REPO


class _Library(Trainer):
    """A trainer written with a library's own API, the library's threads bounded by the ``threads`` option.
    ``package`` (when set): the importable package it needs, and what to say when it is missing."""
    family = "library"
    package: tuple[str, str] | None = None

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        found = cls.package is None or importlib.util.find_spec(cls.package[0]) is not None
        return found, "" if found else cls.package[1]

    def _threads(self) -> int:
        return check_positive_int("option threads", self.opts["threads"])


# -- PyTorch ---------------------------------------------------------------------------------------
class TorchTrainer(_Library):
    name = "torch"
    options = {"threads": 1, "device": "cpu"}
    package = ("torch", "PyTorch is not installed (pip install torch)")

    def _setup(self, params):
        import torch
        from torch import nn

        device, self.threads = self.opts["device"], self._threads()
        check_choice("option device", device, ("cpu", "cuda"))
        if device == "cuda" and not torch.cuda.is_available():
            raise TrainerUnavailable("trainer 'torch' with device='cuda' needs a CUDA GPU and a CUDA build of "
                                     f"PyTorch; this one ({torch.__version__}) sees none. Use device='cpu'.")
        self.torch, self.device = torch, torch.device(device)
        torch.set_num_threads(self.threads)
        layers = [layer for W, _ in params for layer in (nn.Linear(*W.shape), nn.Sigmoid())]
        self.model = nn.Sequential(*layers).to(device=self.device, dtype=getattr(torch, self.dtype.name))
        self.linears = self.model[0::2]
        self._set_params(params)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1.0)  # lr is set on every step

    def _tensor(self, a):
        return self.torch.from_numpy(a).to(self.device)

    def _backward(self, X, Y):
        """The minibatch's loss (a tensor), its gradients left in the layers' ``.grad``."""
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self._tensor(X))
        # 1/B Σ_i ||y_i - a_i||²: summed over outputs, averaged over examples (nn.MSELoss would also
        # divide by the number of outputs, a different loss)
        loss = self.torch.nn.functional.mse_loss(out, self._tensor(Y), reduction="sum") / X.shape[0]
        loss.backward()
        return loss

    def _step(self, X, Y, lr):
        if self.torch.get_num_threads() != self.threads:  # torch's thread count is process-wide
            self.torch.set_num_threads(self.threads)
        loss = self._backward(X, Y)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        return loss.item()  # after the step: on a GPU this waits for the whole step, which the timing needs

    def _gradients(self, X, Y):
        loss = self._backward(X, Y).item()
        return loss, [(lin.weight.grad.T.cpu().numpy().copy(), lin.bias.grad.cpu().numpy().copy())
                      for lin in self.linears]

    def _apply_gradients(self, grads, lr):
        with self.torch.no_grad():
            for lin, (gW, gb) in zip(self.linears, grads):
                lin.weight -= lr * self._tensor(np.ascontiguousarray(np.asarray(gW, dtype=self.dtype).T))
                lin.bias -= lr * self._tensor(np.asarray(gb, dtype=self.dtype))

    def _get_params(self):
        # nn.Linear stores W^T (out, in); the study's convention is W (in, out)
        return [(lin.weight.detach().T.cpu().numpy().copy(), lin.bias.detach().cpu().numpy().copy())
                for lin in self.linears]

    def _set_params(self, params):
        with self.torch.no_grad():
            for lin, (W, b) in zip(self.linears, params):
                lin.weight.copy_(self._tensor(np.ascontiguousarray(W.T)))
                lin.bias.copy_(self._tensor(np.ascontiguousarray(b)))

    def _predict(self, X):
        with self.torch.no_grad():
            return self.model(self._tensor(X)).cpu().numpy()


# -- One SGD graph (``theano_worker.SGDGraph``): under PyTensor in process, under Theano in its own env --
def _flat(pairs) -> list:
    return [a for pair in pairs for a in pair]


def _pairs(flat) -> list[tuple]:
    return list(zip(flat[0::2], flat[1::2]))


class _Graph(_Library):
    """A trainer whose every operation is one request of ``theano_worker``'s protocol (``_run(header, arrays)``
    → (reply header, reply arrays)), answered by an ``SGDGraph``."""

    def _step(self, X, Y, lr):
        return self._run({"op": "step", "lr": lr}, [X, Y])[0]["loss"]

    def _gradients(self, X, Y):
        reply, flat = self._run({"op": "gradients"}, [X, Y])
        return reply["loss"], _pairs(flat)

    def _apply_gradients(self, grads, lr):
        self._run({"op": "apply_gradients", "lr": lr}, [np.asarray(g, dtype=self.dtype) for g in _flat(grads)])

    def _get_params(self):
        return _pairs(self._run({"op": "get_params"})[1])  # fresh arrays: copies, or a reply's own buffers

    def _set_params(self, params):
        self._run({"op": "set_params"}, _flat(params))

    def _predict(self, X):
        return self._run({"op": "predict"}, [X])[1][0]


class PyTensorTrainer(_Graph):
    name = "pytensor"
    # mode: PyTensor's compilation mode. None = its default (C code where it can, and without a BLAS
    # to link against, as after `pip install pytensor`, its GEMMs go through numpy/scipy's BLAS);
    # "NUMBA" compiles the graph with numba instead.
    options = {"threads": 1, "mode": None}
    package = ("pytensor", "PyTensor is not installed (pip install pytensor)")

    def _setup(self, params):
        self.threads = self._threads()
        with warnings.catch_warnings():  # "could not link to a BLAS": expected after pip install, see above
            warnings.filterwarnings("ignore", message=".*could not link to a BLAS.*")
            import pytensor
            import pytensor.tensor as pt

        self.graph = theano_worker.SGDGraph(pytensor, pt, pt.sigmoid, params, str(self.dtype), mode=self.opts["mode"])
        self._blas = ThreadpoolController()

    def _run(self, header, arrays=()):
        # BLAS thread count is process-wide; set it for this call only
        with self._blas.limit(limits=self.threads, user_api="blas"):
            return self.graph.answer(header, arrays)


def theano_python() -> Path:
    """The pinned env's interpreter: ``$PARBP_THEANO_PYTHON``, else the repository's ``.theano-env``."""
    return Path(os.environ.get("PARBP_THEANO_PYTHON") or REPO / ".theano-env" / "bin" / "python")


def theano_compiledir() -> Path:
    """Where Theano caches compiled C modules: ``$PARBP_THEANO_COMPILEDIR``, else the repo's build/."""
    if os.environ.get("PARBP_THEANO_COMPILEDIR"):
        return Path(os.environ["PARBP_THEANO_COMPILEDIR"])
    if (REPO / "pyproject.toml").is_file() and os.access(REPO, os.W_OK):
        return REPO / "build" / "theano"
    return Path(tempfile.gettempdir()) / "parbp-theano"


@functools.cache
def _theano_importable(python: Path) -> tuple[bool, str]:
    """Whether ``python`` finds the theano package (without importing it: cheap), with what to do if not."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('theano') is None)"
    try:
        found, detail = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=30).returncode == 0, ""
    except (OSError, subprocess.TimeoutExpired) as e:
        found, detail = False, f" ({e})"
    return found, "" if found else f"{python} cannot import theano{detail}; run `make theano-env` to (re)build it"


class TheanoTrainer(_Graph):
    name = "theano"
    # blas: which BLAS the compiled graph calls (see theano_worker.blas_ldflags): "auto" links the
    # OpenBLAS bundled with the env's scipy, "numpy" goes through numpy's C API (`blas__ldflags=`)
    options = {"threads": 1, "blas": "auto"}
    start_timeout_s = 300  # a cold compile of the graph's C code takes tens of seconds

    @classmethod
    def availability(cls):
        python = theano_python()
        if not (python.is_file() and os.access(python, os.X_OK)):
            return False, (f"no Theano environment at {python}; run `make theano-env` to build it "
                           "(or point PARBP_THEANO_PYTHON at a python that has theano-pymc 1.1.2)")
        return _theano_importable(python)

    def _setup(self, params):
        threads = self._threads()
        check_choice("option blas", self.opts["blas"], theano_worker.BLAS_CHOICES)
        compiledir = theano_compiledir()
        compiledir.mkdir(parents=True, exist_ok=True)
        # The worker adds blas__ldflags for the `blas` option. User flags come last so they can override ours.
        flags = f"floatX={self.dtype},base_compiledir={compiledir}"
        env = {**os.environ, "THEANO_FLAGS": ",".join(filter(None, [flags, os.environ.get("THEANO_FLAGS")])),
               **dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), str(threads))}
        self._stderr = tempfile.TemporaryFile()  # Theano is chatty; kept for error messages
        self._proc = subprocess.Popen([str(theano_python()), "-u", theano_worker.__file__], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        # kill the worker when this trainer is garbage collected or the interpreter exits
        self._finalizer = weakref.finalize(self, _stop_worker, self._proc)
        try:
            reply, _ = self._run({"op": "init", "dtype": str(self.dtype), "blas": self.opts["blas"]},
                                 _flat(params), timeout=self.start_timeout_s)
        except RuntimeError as e:
            self.close()
            raise TrainerUnavailable(f"the Theano worker failed to start: {e}\nIf the environment is broken, "
                                     "rebuild it with `make theano-env`.") from None
        self.versions = {k: reply[k] for k in ("theano", "numpy", "floatX", "blas")}

    def _run(self, header, arrays=(), timeout=None):
        """Send one request and wait for its reply (at most ``timeout`` seconds for the first byte)."""
        if self._proc.poll() is not None:
            raise RuntimeError(f"the Theano worker has exited (code {self._proc.returncode}){self._stderr_tail()}")
        msg, cause = None, ""
        try:
            theano_worker.write_message(self._proc.stdin, header, arrays)
            if timeout is not None and not select.select([self._proc.stdout], [], [], timeout)[0]:
                self._proc.kill()
                raise RuntimeError(f"the Theano worker did not answer {header['op']!r} within {timeout} s"
                                   f"{self._stderr_tail()}")
            msg = theano_worker.read_message(self._proc.stdout)
        except (BrokenPipeError, EOFError, OSError) as e:
            cause = f" ({type(e).__name__})"
        if msg is None:
            self._proc.wait(timeout=5)
            raise RuntimeError(f"the Theano worker died{cause} (exit code {self._proc.returncode})"
                               f"{self._stderr_tail()}")
        reply, arrays = msg
        if "error" in reply:
            raise RuntimeError(f"the Theano worker failed on {header['op']!r}:\n{reply['error']}")
        return reply, arrays

    def _stderr_tail(self, n=2000) -> str:
        self._stderr.seek(max(0, self._stderr.seek(0, os.SEEK_END) - n))
        tail = self._stderr.read().decode(errors="replace").strip()
        return f"; its stderr ends with:\n{tail}" if tail else ""

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self):
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer()


def _stop_worker(proc: subprocess.Popen) -> None:
    """Ask the worker to leave (closing its stdin is the signal), then make sure it did."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            stream.close()
