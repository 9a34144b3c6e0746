"""The one trainer interface every implementation of this study follows.

    T = parbp.trainers.get("numpy")
    t = T(net="2h", n_in=784, n_out=10, dtype="float32", seed=0, **options)
    loss = t.step(X, Y, lr)     # one minibatch SGD step in place; the minibatch loss before the update
    t.params                    # [(W, b), ...] as host numpy arrays
    t.predict(X)                # output activations

Subclasses set ``name``, declare their ``options`` with defaults, and implement ``_setup``,
``_step``, ``_get_params``, ``_set_params`` and ``_predict``. The checks that every trainer
needs (shapes, dtypes, option names, learning rate) live here, once.
"""
from __future__ import annotations

import math

import numpy as np

from .nets import init_params, layer_sizes

DTYPES = ("float32", "float64")


class TrainerUnavailable(RuntimeError):
    """This trainer cannot run on this machine (no GPU, a missing package, ...); the message says why."""


class Closing:
    """What holds workers, devices, subprocesses or namespaces until ``close``; ``with`` closes it."""

    def close(self) -> None:
        """Release what it holds (nothing, unless a subclass says otherwise)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Trainer(Closing):
    name = "abstract"
    #: accepted keyword options and their defaults, e.g. {"threads": 1}
    options: dict = {}
    default_dtype = "float32"
    # Facts about the implementation, read by the registry, the benchmark and the memory model:
    device = "cpu"    # where the step runs: "cpu" or "gpu"
    family = "numpy"  # "numpy" (array expressions), "kernels" (numba + BLAS), "library" (PyTorch, Theano, ...), "cuda"
    matrix = False    # the step is matrix products over the whole minibatch (activations kept as B × n matrices)
    exact = True      # the step is the serial algorithm (Hogwild's racing workers are not)

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(usable here?, reason if not). Override where a trainer needs hardware or a package."""
        return True, ""

    def __init__(self, net="1h", n_in: int = 784, n_out: int = 10, dtype=None, seed: int = 0, **options):
        ok, why = self.availability()
        if not ok:
            raise TrainerUnavailable(f"trainer {self.name!r} is unavailable here: {why}")
        unknown = set(options) - set(self.options)
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"trainer {self.name!r} got unknown option(s) {sorted(unknown)}; it accepts: {accepted}")
        self.opts = {**self.options, **options}
        dtype = self.default_dtype if dtype is None else str(np.dtype(dtype))
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.sizes = layer_sizes(net, n_in, n_out)
        self.n_in, self.n_out = self.sizes[0], self.sizes[-1]
        self.seed = seed
        self._setup([(W.astype(self.dtype), b.astype(self.dtype)) for W, b in init_params(self.sizes, seed)])

    # -- the interface -------------------------------------------------------------------------
    def step(self, X, Y, lr) -> float:
        X, Y = self._check_batch(X, Y)
        lr = float(lr)
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning rate must be a positive finite number, got {lr}")
        return float(self._step(X, Y, lr))

    @property
    def params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._get_params()

    @params.setter
    def params(self, params) -> None:
        """Load parameters (e.g. a broadcast from rank 0); shapes must match the network."""
        self._set_params(self._check_layers(params, "W", "b"))

    def predict(self, X) -> np.ndarray:
        return self._predict(self._check_X(X))

    def gradients(self, X, Y) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
        """The minibatch loss and ``[(dL/dW, dL/db), ...]`` without updating: what a data-parallel
        worker computes before a reduction. ``step`` equals ``gradients`` then ``apply_gradients``."""
        X, Y = self._check_batch(X, Y)
        return self._gradients(X, Y)

    def apply_gradients(self, grads, lr) -> None:
        """``W -= lr * dW`` for every layer, with gradients shaped like ``params``."""
        self._apply_gradients(grads, float(lr))

    def __repr__(self):
        opts = "".join(f", {k}={v!r}" for k, v in self.opts.items())
        return f"<{self.name} {'-'.join(map(str, self.sizes))} {self.dtype}{opts}>"

    # -- shared checks -------------------------------------------------------------------------
    def _check_layers(self, layers, w: str, b: str, cast=np.array) -> list[tuple[np.ndarray, np.ndarray]]:
        """``layers`` shaped like the parameters, [(``w``, ``b``), ...], each array ``cast`` to this dtype
        (``np.array`` copies); a ValueError names the layer that does not fit."""
        layers = list(layers)
        if len(layers) != len(self.sizes) - 1:
            raise ValueError(f"expected {len(self.sizes) - 1} layers of ({w}, {b}), got {len(layers)}")
        for l, (W, B) in enumerate(layers):
            shape = (self.sizes[l], self.sizes[l + 1])
            if np.shape(W) != shape or np.shape(B) != (shape[1],):
                raise ValueError(f"layer {l}: expected {w}{shape} and {b}({shape[1]},), "
                                 f"got {w}{np.shape(W)} {b}{np.shape(B)}")
        return [(cast(W, dtype=self.dtype), cast(B, dtype=self.dtype)) for W, B in layers]

    def _check_X(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"X must have shape (batch, {self.n_in}), got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X has 0 rows; a minibatch needs at least one example")
        return np.ascontiguousarray(X, dtype=self.dtype)

    def _check_batch(self, X, Y):
        X = self._check_X(X)
        Y = np.asarray(Y)
        if Y.ndim == 1 and self.n_out == 1:
            Y = Y[:, None]
        if Y.ndim != 2 or Y.shape[1] != self.n_out:
            raise ValueError(f"Y must have shape (batch, {self.n_out}), got {Y.shape}")
        if Y.shape[0] != X.shape[0]:
            raise ValueError(f"X and Y disagree on the batch size: {X.shape[0]} rows vs {Y.shape[0]}")
        return X, np.ascontiguousarray(Y, dtype=self.dtype)

    # -- for subclasses ------------------------------------------------------------------------
    def _setup(self, params):  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, X, Y, lr):
        """The gradients, then the update (trainers that fuse the two override this)."""
        loss, grads = self._gradients(X, Y)
        self._apply_gradients(grads, lr)
        return loss

    def _get_params(self):
        """Copies of the parameters, where a trainer keeps them as ``self._params`` (override otherwise)."""
        return [(W.copy(), b.copy()) for W, b in self._params]

    def _set_params(self, params):
        self._setup(params)

    def _batch_buffers(self, B: int) -> dict:
        """The work buffers for batch size B (``_make_buffers``), made on first use; at most 4 sizes are
        kept, so a sweep over batch sizes does not hold them all."""
        cache = self.__dict__.setdefault("_buffers", {})
        if B not in cache:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[B] = self._make_buffers(B)
        return cache[B]

    def _predict(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _gradients(self, X, Y):
        raise NotImplementedError(f"trainer {self.name!r} does not expose its gradients")

    def _apply_gradients(self, grads, lr):
        raise NotImplementedError(f"trainer {self.name!r} does not expose its gradients")
