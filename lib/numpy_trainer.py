"""The plain minibatch matrix form in numpy (float32): the textbook baseline every faster trainer beats.

One step is three GEMMs per layer (forward, delta, weight gradient) and a few elementwise passes,
written the obvious way with temporaries; BLAS uses however many threads it is configured for.
``loss="xent"`` swaps the study's sigmoid + MSE output for softmax + cross-entropy (the usual setup of
course projects such as seed 003, whose reported loss is not on the MSE's scale); the hidden layers stay sigmoid.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from .base import Trainer
from .cli import check_choice


class NumpyTrainer(Trainer):
    name = "numpy"
    options = {"loss": "mse"}
    LOSSES = ("mse", "xent")

    def _setup(self, params):
        check_choice("loss", self.opts["loss"], self.LOSSES, unknown=True)
        self._params = [(W.copy(), b.copy()) for W, b in params]

    def _forward(self, X):
        A = [X]
        for l, (W, b) in enumerate(self._params):
            z = A[-1] @ W + b
            if l == len(self._params) - 1 and self.opts["loss"] == "xent":
                e = np.exp(z - z.max(axis=1, keepdims=True))
                A.append(e / e.sum(axis=1, keepdims=True))
            else:
                A.append(expit(z))
        return A

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

    def _apply_gradients(self, grads, lr):
        for (W, b), (gW, gb) in zip(self._params, grads):
            W -= self.dtype.type(lr) * gW
            b -= self.dtype.type(lr) * gb

    def _predict(self, X):
        return self._forward(X)[-1]
