"""The plain minibatch matrix form in numpy (float32): the textbook baseline every faster trainer beats.

One step is three GEMMs per layer (forward, delta, weight gradient) and a few elementwise passes,
written the obvious way with temporaries; BLAS uses however many threads it is configured for.
``loss="xent"`` swaps the study's sigmoid + MSE output for softmax + cross-entropy (the usual setup of
course projects such as seed 003, whose reported loss is not on the MSE's scale); the hidden layers stay sigmoid.
"""
from __future__ import annotations

import numpy as np

from .cli import check_choice
from .reference import ReferenceTrainer, forward


class NumpyTrainer(ReferenceTrainer):
    """The reference's parameters and update, float32 by default, with its own forward and backward passes."""

    name = "numpy"
    default_dtype = "float32"
    options = {"loss": "mse"}
    LOSSES = ("mse", "xent")

    def _setup(self, params):
        check_choice("loss", self.opts["loss"], self.LOSSES, unknown=True)
        super()._setup(params)

    def _forward(self, X):
        if self.opts["loss"] == "mse":
            return forward(self._params, X)
        A = forward(self._params[:-1], X)  # sigmoid hidden layers, then the softmax
        W, b = self._params[-1]
        z = A[-1] @ W + b
        e = np.exp(z - z.max(axis=1, keepdims=True))  # shifted, so exp cannot overflow
        return [*A, e / e.sum(axis=1, keepdims=True)]

    def _gradients(self, X, Y):
        A = self._forward(X)
        B = X.shape[0]
        err = A[-1] - Y
        if self.opts["loss"] == "xent":  # softmax + cross-entropy: the output delta is a - y
            loss = -float(np.sum(Y * np.log(np.maximum(A[-1], 1e-12)), dtype=np.float64)) / B
            delta = err / B
        else:
            loss = float(np.einsum("ij,ij->", err, err, dtype=np.float64)) / B
            delta = (2.0 / B) * err * A[-1] * (1.0 - A[-1])
        grads = [None] * len(self._params)
        for l in range(len(self._params) - 1, -1, -1):
            grads[l] = (A[l].T @ delta, delta.sum(axis=0))
            if l > 0:
                delta = (delta @ self._params[l][0].T) * A[l] * (1.0 - A[l])
        return loss, grads

    def _predict(self, X):
        return self._forward(X)[-1]
