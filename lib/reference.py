"""The reference: float64 forward and backward propagation, written to read like seed 001 eqs. 4-9.

This is the single source of truth for gradients; every other trainer is tested against it.

Notation (one example per row, so the paper's ``z_l = W_l^T x_l + b_l`` becomes ``Z_l = A_{l-1} W_l + b_l``):
  A_0 = X                                   the input layer passes the data through
  Z_l = A_{l-1} W_l + b_l                   eq. 4
  A_l = σ(Z_l),  σ(z) = 1 / (1 + e^{-z})    eqs. 3, 5
  L   = 1/B Σ_i ||y_i - a_L(x_i)||²          eq. 1, over the B examples of the minibatch
  Δ_L = ∂L/∂Z_L = 2/B (A_L - Y) ∘ σ'(Z_L)    eq. 7 (output delta, with the MSE factor 2/B)
  Δ_l = (Δ_{l+1} W_{l+1}^T) ∘ σ'(Z_l)        eq. 8, σ'(Z_l) = A_l (1 - A_l)
  ∂L/∂W_l = A_{l-1}^T Δ_l,  ∂L/∂b_l = Σ_i Δ_l[i]   eq. 9: per-example outer products summed
  W_l ← W_l - lr ∂L/∂W_l                     gradient descent (seed 001 §3.1)
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit as sigmoid  # σ(z) = 1/(1+e^{-z}), neither overflowing nor losing precision

from .base import Trainer


def forward(params, X):
    """Activations ``[A_0, A_1, ..., A_L]`` of every layer (eqs. 4-5)."""
    A = [X]
    for W, b in params:
        A.append(sigmoid(A[-1] @ W + b))
    return A


def mse_loss(A_L, Y) -> float:
    """L = 1/B Σ_i ||y_i - a_L(x_i)||² (eq. 1)."""
    return float(np.sum((Y - A_L) ** 2) / Y.shape[0])


def backward(params, A, Y):
    """Gradients ``[(∂L/∂W_l, ∂L/∂b_l), ...]`` from the activations of a forward pass (eqs. 7-9)."""
    B = Y.shape[0]
    grads = [None] * len(params)
    delta = (2.0 / B) * (A[-1] - Y) * A[-1] * (1.0 - A[-1])  # eq. 7
    for l in range(len(params) - 1, -1, -1):
        grads[l] = (A[l].T @ delta, delta.sum(axis=0))  # eq. 9
        if l > 0:
            W = params[l][0]
            delta = (delta @ W.T) * A[l] * (1.0 - A[l])  # eq. 8
    return grads


def loss_and_gradients(params, X, Y):
    """The loss on a minibatch and its exact gradients, in float64."""
    A = forward(params, X)
    return mse_loss(A[-1], Y), backward(params, A, Y)


class ReferenceTrainer(Trainer):
    """The equations above as a trainer: float64 unless asked otherwise, no tricks."""

    name = "reference"
    default_dtype = "float64"

    def _setup(self, params):
        self._params = [(W.copy(), b.copy()) for W, b in params]

    def _gradients(self, X, Y):
        return loss_and_gradients(self._params, X, Y)

    def _apply_gradients(self, grads, lr):
        for (W, b), (gW, gb) in zip(self._params, grads):
            W -= lr * gW
            b -= lr * gb

    def _predict(self, X):
        return forward(self._params, X)[-1]
