"""Network definitions: layer sizes, seeded initialization and FLOP counts (seed 001 §5.2).

A network is a list of layer widths ``[n_in, h_1, ..., n_out]``. Weights follow the paper's
convention ``z_l = W_l^T a_{l-1} + b_l`` with ``W_l`` of shape ``(n_{l-1}, n_l)``; in minibatch
form, with one example per row, this is ``Z = A @ W + b``.
"""
from __future__ import annotations

import numpy as np

#: The paper's two networks: hidden widths only; input and output sizes follow the dataset.
HIDDEN = {"1h": [1024], "2h": [1024, 1024]}


def parse_net(text: str):
    """A net as a command line spells it: "1h", "2h", or comma-separated hidden widths ("64,32" -> [64, 32])."""
    if text in HIDDEN:
        return text
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise ValueError(f"unknown net {text!r}; choose one of {sorted(HIDDEN)} or comma-separated positive "
                         f"hidden widths like 64,32")
    return widths


def layer_sizes(net, n_in: int, n_out: int) -> list[int]:
    """Widths of every layer, input to output, for ``net`` = "1h", "2h", "64,32" or an explicit list: the hidden
    widths alone (``[512, 256]``) or the full ``[n_in, ..., n_out]`` (its ends matching the dataset)."""
    net = parse_net(net) if isinstance(net, str) else net
    if isinstance(net, str):  # "1h" or "2h"
        sizes = [n_in, *HIDDEN[net], n_out]
    else:
        try:
            sizes = [int(s) for s in net]
        except TypeError:
            raise ValueError(f"net must be one of {sorted(HIDDEN)} or a list of layer sizes, got {net!r}") from None
        if not (len(sizes) >= 2 and sizes[0] == n_in and sizes[-1] == n_out):  # the hidden widths alone
            sizes = [n_in, *sizes, n_out]
    if any(s <= 0 for s in sizes):
        raise ValueError(f"layer sizes must be positive, got {sizes}")
    return sizes


def init_params(sizes: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded float64 parameters ``[(W, b), ...]``, every trainer's start (cast to its dtype): Glorot-uniform,
    ``W ~ U(-r, r)``, ``r = sqrt(6 / (fan_in + fan_out))``, biases 0, which keeps pre-activations where σ' is
    largest. Not the ×4 variant for sigmoid: over a fan-in of 1024 positive inputs it saturates the outputs
    before the first step (initial MSE 2.94 vs 2.34)."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        r = np.sqrt(6.0 / (fan_in + fan_out))
        params.append((rng.uniform(-r, r, size=(fan_in, fan_out)), np.zeros(fan_out)))
    return params


def n_params(sizes: list[int]) -> int:
    """Number of weights and biases."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def flops_per_step(sizes: list[int], batch_size: int) -> int:
    """Floating-point operations of one SGD step (every GFLOP/s of the study divides it by seconds): the matrix
    products at 2 per multiply-add, plus the elementwise work every implementation must do."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    per_example = 0
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        per_example += 2 * fan_in * fan_out + 2 * fan_out  # forward product, bias, sigmoid
        per_example += 2 * fan_in * fan_out + fan_out      # weight and bias gradient
        if i > 0:
            per_example += 2 * fan_out * fan_in + 2 * fan_in  # delta for the layer below, times σ'
    per_example += 3 * sizes[-1]  # the output delta: a - y, times σ', times the loss scale
    return batch_size * per_example + 2 * n_params(sizes)  # the update: scale and subtract, once a step


def flops_per_example(sizes: list[int], batch_size: int) -> float:
    """FLOPs per training example at a given minibatch size (the update is shared by the batch)."""
    return flops_per_step(sizes, batch_size) / batch_size
