"""Compressing a trained network (seed 002, "Compressing a network"; Han et al., Deep Compression, 2016).

Three steps, each undoing less accuracy than it saves memory: P, magnitude pruning in rounds with retraining;
Q, weight sharing by k-means with fine-tuned centroids; H, Huffman coding of the cluster indices and CSR gaps.
Every size counts all that rebuilds the layer: streams, codebook, Huffman code lengths and biases.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import numbers
import timeit
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit as sigmoid

from . import checkpoint, data, trainers
from .cli import Parser, nonnegative_int, positive_float, positive_int, run
from .results import BUILD, FIGURES
from .train import accuracy, fit, shuffled_batches

FLOAT_BITS = 32  # the uncompressed network: float32


# -- Argument checks ----------------------------------------------------------------------------------
def check_sparsity(value, name: str = "sparsity") -> float:
    """A fraction of weights to remove, in [0, 1) (removing all of a layer's weights disconnects it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1) (the fraction of weights removed), got {value!r}")
    return float(value)


def check_bits(value, name: str = "bits") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= 16:
        raise ValueError(f"{name} must be an integer from 1 to 16 (k = 2**bits shared weights), got {value!r}")
    return int(value)


def _per_layer(value, n_layers: int, check, name: str) -> list:
    """A scalar for every layer, or one value per layer."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n_layers
    if len(values) != n_layers:
        raise ValueError(f"{name} needs one value per layer ({n_layers}), got {len(values)}: {value!r}")
    return [check(v, f"{name}[{l}]") for l, v in enumerate(values)]


# -- The trained network the compression starts from --------------------------------------------------
def load_or_train(trainer, path=None, dataset=None, epochs: int = 1, batch_size: int = 10, lr: float = 0.1,
                  seed: int = 0) -> str:
    """Give ``trainer`` the network to compress, and say in one line where it came from: the one notebook 08
    saved at ``path`` (its hash checked on loading) or, with no path, one trained here on ``dataset``."""
    if path is None:
        if dataset is None:
            raise ValueError("load_or_train needs a saved network (path) or a dataset to train one on")
        fit(trainer, dataset, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=False,
            eval_train=False)
        return f"trained here: {len(dataset.X_train)} examples, {epochs} epochs, batch {batch_size}, lr {lr}"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained network there; run notebook 08 first (make study runs it "
                                f"before 09), or give no path to train one here")
    params, meta = checkpoint.load_params(path)
    shapes, expected = [W.shape for W, _ in params], [W.shape for W, _ in trainer.params]
    if shapes != expected:
        raise ValueError(f"{path} holds a network of weight shapes {shapes}; this trainer's are {expected}")
    trainer.params = params
    return f"loaded from {path.name} ({meta})"


# -- P: magnitude pruning with retraining -------------------------------------------------------------
def magnitude_masks(params, sparsity) -> list[np.ndarray]:
    """Boolean masks keeping each layer's largest-magnitude weights; ``sparsity`` (one fraction, or one
    per layer) is the share removed. Ties at the threshold are broken by position, so the count is exact."""
    # each weight's rank by magnitude: the round(s * size) smallest are removed
    return [(np.argsort(np.argsort(np.abs(W), axis=None, kind="stable")) >= round(s * W.size)).reshape(W.shape)
            for (W, _), s in zip(params, _per_layer(sparsity, len(params), check_sparsity, "sparsity"))]


def apply_masks(params, masks):
    return [(W * M, b) for (W, b), M in zip(params, masks)]


def sparsity_of(masks) -> list[float]:
    return [1.0 - float(M.mean()) for M in masks]


def accuracy_pruned_once(trainer, sparsities, X, y) -> pd.DataFrame:
    """Test accuracy of ``trainer``'s network magnitude-pruned to each sparsity in one cut, without
    retraining (the cliff that pruning in rounds avoids); the trainer keeps its network."""
    dense, rows = trainer.params, []
    try:
        for s in sparsities:
            trainer.params = apply_masks(dense, magnitude_masks(dense, s))
            rows.append({"weights_removed": s, "test_acc": accuracy(trainer, X, y)})
    finally:
        trainer.params = dense
    return pd.DataFrame(rows)


def train_masked(trainer, dataset, masks, epochs: int, batch_size: int, lr: float, seed: int = 0):
    """SGD with the mask held: every gradient is multiplied by the mask before the update, so pruned
    weights (zero when this starts) stay exactly zero. ``trainer`` must expose ``gradients``."""
    trainer.params = apply_masks(trainer.params, masks)
    for Xb, Yb in shuffled_batches(dataset, epochs, batch_size, seed):
        _, grads = trainer.gradients(Xb, Yb)
        trainer.apply_gradients([(gW * M, gb) for (gW, gb), M in zip(grads, masks)], lr)


def prune_in_rounds(trainer, dataset, schedule, epochs: int, batch_size: int, lr: float, seed: int = 0,
                    on_round=None) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Han et al.'s iterative pruning: for each entry of ``schedule`` (a sparsity, or one per layer, not
    decreasing), prune to it by magnitude and retrain ``epochs`` with the mask held. Returns the final masks
    and a row per round (per-layer sparsity, test accuracy before and after retraining), each also given to
    ``on_round``."""
    rows, masks = [], None
    for r, target in enumerate(schedule, start=1):
        masks = magnitude_masks(trainer.params, target)
        trainer.params = apply_masks(trainer.params, masks)
        before = accuracy(trainer, dataset.X_test, dataset.y_test)
        train_masked(trainer, dataset, masks, epochs, batch_size, lr, seed=seed + r)
        row = {"round": r, **{f"sparsity_{l}": s for l, s in enumerate(sparsity_of(masks))},
               "weights_removed": 1.0 - sum(int(M.sum()) for M in masks) / sum(M.size for M in masks),
               "test_acc_pruned": before, "test_acc_retrained": accuracy(trainer, dataset.X_test, dataset.y_test)}
        rows.append(row)
        if on_round:
            on_round(row)
    return masks, pd.DataFrame(rows)


# -- CSR storage and sparse inference -----------------------------------------------------------------
def to_csr(params) -> list[tuple[sp.csr_matrix, np.ndarray]]:
    """Each layer as (Wᵀ in CSR, bias): row j holds the nonzero incoming weights of unit j."""
    return [(sp.csr_matrix(np.ascontiguousarray(W.T)), b) for W, b in params]


def predict_csr(layers, X):
    """The network's outputs computed from CSR weights: Z_lᵀ = W_lᵀ A_{l-1}ᵀ, a sparse × dense product."""
    A = np.asarray(X)
    for Wt, b in layers:
        A = sigmoid((Wt @ A.T).T + b)
    return A


def predict_dense(params, X):
    A = np.asarray(X)
    for W, b in params:
        A = sigmoid(A @ W + b)
    return A


# -- Q: weight sharing by k-means ---------------------------------------------------------------------
def kmeans_1d(values, k: int, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(sorted centroids, label of each value) by Lloyd's algorithm on scalars, linearly initialized (evenly
    spaced from the smallest to the largest value, which Deep Compression found best: it keeps the rare large
    weights). In 1-D the nearest centroid is a bisection on the midpoints between sorted centroids."""
    values, k = np.asarray(values, dtype=np.float64).ravel(), int(k)
    if values.size == 0 or k < 1:
        raise ValueError(f"kmeans_1d needs at least one value and k >= 1, got {values.size} values and k = {k}")
    centroids = np.linspace(values.min(), values.max(), k)
    for _ in range(iterations):
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        counts = np.bincount(labels, minlength=k)
        sums = np.bincount(labels, weights=values, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)  # empty clusters stay put
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(updated)
    return centroids, np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)


@dataclass
class SharedLayer:
    """A pruned layer whose surviving weights share ``len(centroids)`` values: weight i of the mask (in
    row-major order of W) is ``centroids[labels[i]]``."""

    mask: np.ndarray        # (n_in, n_out) bool
    centroids: np.ndarray   # (k,) float32
    labels: np.ndarray      # (nnz,) int, row-major order of W
    bias: np.ndarray        # (n_out,)

    def dense(self) -> np.ndarray:
        """The dequantized dense weight matrix."""
        W = np.zeros(self.mask.shape, dtype=np.float32)
        W[self.mask] = self.centroids[self.labels]
        return W


def share_weights(params, masks, bits) -> list[SharedLayer]:
    """k-means with k = 2**bits on each layer's surviving weights (``bits``: one, or one per layer)."""
    layers = []
    for (W, b), M, nb in zip(params, masks, _per_layer(bits, len(params), check_bits, "bits")):
        centroids, labels = kmeans_1d(W[M], 2 ** nb)
        layers.append(SharedLayer(M.copy(), centroids.astype(np.float32), labels, np.asarray(b, np.float32).copy()))
    return layers


def dequantize(layers: list[SharedLayer]):
    return [(L.dense(), L.bias) for L in layers]


def finetune_centroids(layers: list[SharedLayer], trainer, dataset, epochs: int, batch_size: int, lr: float,
                       seed: int = 0) -> None:
    """Deep Compression's retraining of the shared weights: the gradient of a centroid is the sum of the
    gradients of the weights that share it (``np.bincount`` over the labels); biases train as usual.
    The assignment of weights to centroids never changes. Updates ``layers`` in place."""
    for Xb, Yb in shuffled_batches(dataset, epochs, batch_size, seed):
        trainer.params = dequantize(layers)
        _, grads = trainer.gradients(Xb, Yb)
        for L, (gW, gb) in zip(layers, grads):
            step = np.bincount(L.labels, weights=gW[L.mask], minlength=len(L.centroids))
            L.centroids -= np.float32(lr) * step.astype(np.float32)
            L.bias -= np.float32(lr) * gb
    trainer.params = dequantize(layers)


# -- H: Huffman coding --------------------------------------------------------------------------------
class HuffmanCode:
    """A canonical Huffman code over the symbols 0..n-1, defined by its code lengths (stored: ``table_bits``).
    Hand-written with ``heapq`` on purpose: the coders on PyPI add an end-of-file symbol to every code
    (dahuffman), which changes the lengths being measured, or are unmaintained."""

    def __init__(self, lengths):
        """The code from its lengths (0: the symbol never occurs): sorted by (length, symbol), codes count up."""
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.codes = np.zeros(len(self.lengths), dtype=np.int64)
        code, previous = 0, 0
        for s in sorted(np.flatnonzero(self.lengths), key=lambda s: (self.lengths[s], s)):
            code <<= int(self.lengths[s]) - previous
            self.codes[s], previous = code, int(self.lengths[s])
            code += 1

    @classmethod
    def fit(cls, symbols, n_symbols: int | None = None) -> "HuffmanCode":
        """The optimal code for ``symbols`` (non-negative integers, an alphabet of at least ``n_symbols``)."""
        symbols = np.asarray(symbols, dtype=np.int64)
        if symbols.size == 0 or symbols.min() < 0:
            raise ValueError("Huffman coding needs a non-empty sequence of non-negative integer symbols")
        counts = np.bincount(symbols, minlength=n_symbols or 0)
        lengths = np.zeros(len(counts), dtype=np.int64)
        present = np.flatnonzero(counts)
        # heap of (weight, tiebreak, symbols in the subtree): merging two subtrees lengthens their codes
        tiebreak = itertools.count()
        heap = [(int(counts[s]), next(tiebreak), [int(s)]) for s in present]
        heapq.heapify(heap)
        while len(heap) > 1:
            (w1, _, s1), (w2, _, s2) = heapq.heappop(heap), heapq.heappop(heap)
            lengths[s1 + s2] += 1
            heapq.heappush(heap, (w1 + w2, next(tiebreak), s1 + s2))
        lengths[present] = np.maximum(lengths[present], 1)  # a lone symbol still needs one bit per occurrence
        return cls(lengths)

    @property
    def table_bits(self) -> int:
        """Bits to store the code: one length per symbol, each in enough bits for the longest."""
        return len(self.lengths) * max(1, int(self.lengths.max()).bit_length())

    def encode(self, symbols) -> tuple[np.ndarray, int]:
        """(packed bytes, number of bits) of the concatenated codes."""
        symbols = np.asarray(symbols, dtype=np.int64)
        lengths = self.lengths[symbols]
        if (lengths == 0).any():
            raise ValueError("a symbol outside this code's alphabet (it did not occur when the code was fit)")
        n_bits = int(lengths.sum())
        owner = np.repeat(np.arange(len(symbols)), lengths)  # which symbol each output bit belongs to
        position = np.arange(n_bits) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        bits = (self.codes[symbols][owner] >> (lengths[owner] - 1 - position)) & 1
        return np.packbits(bits.astype(np.uint8)), n_bits

    def decode(self, packed, n_bits: int) -> np.ndarray:
        """The symbols back from ``encode``'s output (canonical decoding: one comparison per bit)."""
        bits = np.unpackbits(np.asarray(packed, dtype=np.uint8))[:n_bits]
        by_code = {(int(L), int(c)): s for s, (L, c) in enumerate(zip(self.lengths, self.codes)) if L}
        out, code, length = [], 0, 0
        for bit in bits.tolist():
            code, length = (code << 1) | bit, length + 1
            if (length, code) in by_code:
                out.append(by_code[length, code])
                code, length = 0, 0
        if length:
            raise ValueError("the bit stream ends inside a code")
        return np.array(out, dtype=np.int64)


# -- The stored layer: relative positions, codebook, sizes --------------------------------------------
def relative_positions(mask_t: np.ndarray, index_bits: int) -> np.ndarray:
    """The gap stream of a CSR matrix's nonzeros in row-major order: for each nonzero, the number of
    zeros skipped since the previous one. Gaps ≥ E = 2^bits − 1 emit the escape symbol E (skip E
    positions, no weight) as many times as needed, then the remainder."""
    escape = 2 ** check_bits(index_bits, "index_bits") - 1
    gaps = np.diff(np.flatnonzero(mask_t), prepend=-1) - 1
    escapes, rest = np.divmod(gaps, escape)
    # each nonzero contributes escapes[i] escape symbols followed by its remainder
    stream = np.full(int(escapes.sum()) + len(gaps), escape, dtype=np.int64)
    stream[np.cumsum(escapes + 1) - 1] = rest
    return stream


def positions_from_gaps(stream: np.ndarray, index_bits: int) -> np.ndarray:
    """The inverse of ``relative_positions``: flat positions of the nonzeros."""
    escape = 2 ** index_bits - 1
    is_gap = stream != escape
    # position of each nonzero = (everything skipped so far, escapes included) + one per earlier nonzero
    return (np.cumsum(np.where(is_gap, stream + 1, escape)) - 1)[is_gap]


def encode_layer(layer: SharedLayer, index_bits: int) -> dict:
    """The layer as it would be stored after P+Q+H: the Huffman-coded cluster indices and gap stream
    (packed bytes and their exact bit counts), the two code tables, the codebook and the biases."""
    gaps = relative_positions(layer.mask.T, index_bits)
    labels = np.full(layer.mask.shape, -1, dtype=np.int64)
    labels[layer.mask] = layer.labels
    weights = labels.T[layer.mask.T]  # the cluster indices in CSR order (row-major over Wᵀ)
    gap_code = HuffmanCode.fit(gaps, 2 ** index_bits)
    weight_code = HuffmanCode.fit(weights, len(layer.centroids))
    return {"shape": layer.mask.shape, "index_bits": index_bits, "centroids": layer.centroids,
            "bias": layer.bias, "gap_code": gap_code, "weight_code": weight_code,
            "gaps": gap_code.encode(gaps), "weights": weight_code.encode(weights)}


def decode_layer(stored: dict) -> np.ndarray:
    """The dense weight matrix back from ``encode_layer``'s output."""
    n_in, n_out = stored["shape"]
    gaps = stored["gap_code"].decode(*stored["gaps"])
    labels = stored["weight_code"].decode(*stored["weights"])
    W_t = np.zeros(n_out * n_in, dtype=np.float32)
    W_t[positions_from_gaps(gaps, stored["index_bits"])] = stored["centroids"][labels]
    return W_t.reshape(n_out, n_in).T


def _stream_bits(stored: dict, kind: str) -> int:
    """Bits of an encoded layer's "gap" or "weight" (cluster-index) stream and its code table."""
    return stored[f"{kind}s"][1] + stored[f"{kind}_code"].table_bits


def encoded_bits(stored: dict) -> int:
    """The bits ``encode_layer``'s output needs to rebuild the layer: streams, code tables, codebook, biases."""
    codebook_and_bias = (len(stored["centroids"]) + len(stored["bias"])) * FLOAT_BITS
    return _stream_bits(stored, "gap") + _stream_bits(stored, "weight") + codebook_and_bias


def smallest_encoding(layer: SharedLayer, max_index_bits: int = 12) -> dict:
    """``encode_layer`` at the gap width (1 to ``max_index_bits``) that stores the positions in the fewest bits."""
    return min((encode_layer(layer, ib) for ib in range(1, max_index_bits + 1)), key=lambda e: _stream_bits(e, "gap"))


def stored_bits(layer: SharedLayer, max_index_bits: int = 12) -> dict:
    """The stored size of one layer, P+Q (fixed-width fields) and P+Q+H (the real Huffman-coded streams and
    their tables), each at its best index width; the codebook and the biases count in both."""
    nnz, b = int(layer.mask.sum()), layer.bias
    weight_bits_pq = nnz * max(1, (len(layer.centroids) - 1).bit_length())  # lg k bits per cluster index
    extra = (len(layer.centroids) + len(b)) * FLOAT_BITS
    # P+Q: fixed-width gap fields, at the width that makes the stream shortest
    index_pq = min(len(relative_positions(layer.mask.T, ib)) * ib for ib in range(1, max_index_bits + 1))
    stored = smallest_encoding(layer, max_index_bits)  # P+Q+H: the width whose coded gaps are shortest
    return {"weights": layer.mask.size, "nonzeros": nnz, "original_bits": (layer.mask.size + len(b)) * FLOAT_BITS,
            "weight_bits_pq": weight_bits_pq, "weight_bits_pqh": _stream_bits(stored, "weight"),
            "index_bits_pq": index_pq, "index_bits_pqh": _stream_bits(stored, "gap"),
            "index_width_pqh": stored["index_bits"],
            "total_bits_pq": weight_bits_pq + index_pq + extra, "total_bits_pqh": encoded_bits(stored)}


def compression_table(layers: list[SharedLayer], names=None) -> pd.DataFrame:
    """Seed 002's table (Deep Compression's): per layer and in total, #weights, weights % kept after P,
    bits per weight and per index after P+Q and P+Q+H, and the compressed size as % of float32."""
    names = names or [f"fc{l + 1}" for l in range(len(layers))]
    raw = pd.DataFrame([stored_bits(L) for L in layers], index=names)
    raw.loc["total"] = raw.sum(numeric_only=True)
    nnz, original = raw.nonzeros, raw.original_bits
    return pd.DataFrame({
        "#weights": raw.weights.astype(int), "weights % (P)": 100 * nnz / raw.weights,
        "weight bits (P+Q)": raw.weight_bits_pq / nnz, "weight bits (P+Q+H)": raw.weight_bits_pqh / nnz,
        "index bits (P+Q)": raw.index_bits_pq / nnz, "index bits (P+Q+H)": raw.index_bits_pqh / nnz,
        "compress rate (P+Q) %": 100 * raw.total_bits_pq / original,
        "compress rate (P+Q+H) %": 100 * raw.total_bits_pqh / original,
        # bits of the gap alphabet chosen for P+Q+H, per layer (the total has none)
        "index width": raw.index_width_pqh.astype("Int64").mask(raw.index == "total"),
        "bytes (P+Q+H)": raw.total_bits_pqh / 8, "× smaller (P+Q+H)": original / raw.total_bits_pqh})


# -- The compressed network as a file -----------------------------------------------------------------
KIND = "compressed network (P+Q+H)"


def save_compressed(path, layers: list[SharedLayer], meta: dict | None = None) -> Path:
    """Write the P+Q+H network, each layer at its smallest encoding (``encode_layer``'s streams, code lengths,
    codebook, biases), with ``meta`` (JSON); atomically by ``parbp.checkpoint``, with every array's SHA-256."""
    arrays, described = {}, []
    for l, layer in enumerate(layers, start=1):
        stored, name = smallest_encoding(layer), f"fc{l}"
        arrays.update({f"{name}_weights": stored["weights"][0], f"{name}_gaps": stored["gaps"][0],
                       f"{name}_weight_code": stored["weight_code"].lengths.astype(np.uint8),
                       f"{name}_gap_code": stored["gap_code"].lengths.astype(np.uint8),
                       f"{name}_centroids": stored["centroids"], f"{name}_bias": stored["bias"]})
        described.append({"name": name, "shape": list(stored["shape"]), "index_bits": stored["index_bits"],
                          "weight_bits": stored["weights"][1], "gap_bits": stored["gaps"][1]})
    return checkpoint.save_arrays(path, arrays, {**(meta or {}), "kind": KIND, "layers": described})


def load_compressed(path) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """(params decoded from the Huffman streams, meta with ``stored_bytes``: the P+Q+H size of what was read)
    of a file from ``save_compressed``; one whose arrays changed after writing raises ``CheckpointError``."""
    arrays, meta = checkpoint.load_arrays(path)
    if meta.get("kind") != KIND:
        raise checkpoint.CheckpointError(f"{path} is not a {KIND} (its kind: {meta.get('kind')!r})")
    params, bits = [], 0
    for layer in meta["layers"]:
        a = lambda field: arrays[f"{layer['name']}_{field}"]  # noqa: E731
        stored = {"shape": tuple(layer["shape"]), "index_bits": layer["index_bits"],
                  "centroids": a("centroids"), "bias": a("bias"),
                  "weight_code": HuffmanCode(a("weight_code")), "gap_code": HuffmanCode(a("gap_code")),
                  "weights": (a("weights"), layer["weight_bits"]), "gaps": (a("gaps"), layer["gap_bits"])}
        params.append((decode_layer(stored), stored["bias"]))
        bits += encoded_bits(stored)
    return params, {**meta, "stored_bytes": bits / 8}


# -- The whole pipeline on one trained network --------------------------------------------------------
def deep_compression(trainer, dataset, schedule, bits, retrain_epochs: int, batch_size: int, lr: float,
                     finetune_epochs: int, finetune_lr: float, bits_curve=(), finetune_data=None, seed: int = 0,
                     on_round=None) -> dict:
    """P, then Q, then H on ``trainer``'s (trained) network, and the test accuracy (``dataset``'s) after each.

    ``schedule``: the pruning rounds (``prune_in_rounds``); ``bits``: the final cluster-index width (one, or one
    per layer); ``bits_curve``: widths (every layer alike) quantized from the pruned network and fine-tuned like
    the final one, for the accuracy-against-bits curve; ``finetune_data``: what the centroids are fine-tuned on
    (default: ``dataset``). Returns the tables ``rounds``, ``bits_curve``, ``stages``, ``table`` (seed 002's) and
    the final ``masks`` and ``shared`` layers; leaves the decoded P+Q+H network in the trainer.
    """
    acc = lambda: accuracy(trainer, dataset.X_test, dataset.y_test)  # noqa: E731
    dense_acc = acc()
    masks, rounds = prune_in_rounds(trainer, dataset, schedule, retrain_epochs, batch_size, lr, seed, on_round)
    pruned, pruned_acc = trainer.params, acc()

    def quantize(b):  # the pruned network's shared layers at b bits, and its accuracy before and after fine-tuning
        shared = share_weights(pruned, masks, b)
        trainer.params = dequantize(shared)
        before = acc()
        finetune_centroids(shared, trainer, finetune_data or dataset, finetune_epochs, batch_size, finetune_lr, seed)
        return shared, {"bits": b, "test_acc_clustered": before, "test_acc_finetuned": acc()}

    curve = pd.DataFrame([quantize(b)[1] for b in bits_curve])
    shared, final = quantize(bits)
    table = compression_table(shared)
    # H is lossless: the network is rebuilt from the encoded streams and evaluated again
    trainer.params = [(decode_layer(smallest_encoding(L)), L.bias) for L in shared]
    huffman_acc = acc()
    total = table.loc["total"]
    original, rate_pq = sum(W.size + b.size for W, b in pruned) * FLOAT_BITS / 8, total["compress rate (P+Q) %"]
    stages = pd.DataFrame([
        {"stage": "dense (float32)", "test_acc": dense_acc, "bytes": original, "x_smaller": 1.0},
        {"stage": "P (pruned, retrained)", "test_acc": pruned_acc,
         "weights_kept": 1 - rounds.weights_removed.iloc[-1]},
        {"stage": "P+Q (clustered)", "test_acc": final["test_acc_clustered"]},
        {"stage": "P+Q (centroids fine-tuned)", "test_acc": final["test_acc_finetuned"],
         "bytes": original * rate_pq / 100, "x_smaller": 100 / rate_pq},
        {"stage": "P+Q+H (decoded from the Huffman streams)", "test_acc": huffman_acc,
         "bytes": total["bytes (P+Q+H)"], "x_smaller": total["× smaller (P+Q+H)"]},
    ])
    stages["accuracy_lost_points"] = 100 * (dense_acc - stages.test_acc)
    return {"rounds": rounds, "bits_curve": curve, "stages": stages, "table": table,
            "masks": masks, "shared": shared}


def inference_speed(params, sparsities, batches, repeats: int = 7, seed: int = 0) -> pd.DataFrame:
    """Seconds per forward pass (best of ``repeats``), dense (numpy's BLAS, one thread) against CSR (scipy.sparse,
    single-threaded), every layer magnitude-pruned to each sparsity. CSR reads an index per nonzero and cannot
    block for the cache as a GEMM does; at batch 1 both are memory-bound matrix-vector products."""
    from .blas import blas_threads

    rng, rows = np.random.default_rng(seed), []
    with blas_threads(1):
        for s in sparsities:
            pruned = apply_masks(params, magnitude_masks(params, check_sparsity(s)))
            dense = [(np.ascontiguousarray(W, dtype=np.float32), b.astype(np.float32)) for W, b in pruned]
            sparse = to_csr(dense)
            for B in batches:
                X = rng.random((B, params[0][0].shape[0]), dtype=np.float32)
                for kind, predict in (("dense", lambda: predict_dense(dense, X)),
                                      ("csr", lambda: predict_csr(sparse, X))):
                    predict()  # warm
                    best = min(timeit.repeat(predict, number=1, repeat=repeats))
                    rows.append({"sparsity": s, "batch": B, "kind": kind, "seconds": best})
    wide = pd.DataFrame(rows).pivot_table(index=["sparsity", "batch"], columns="kind", values="seconds").reset_index()
    wide["csr_speedup"] = wide.dense / wide.csr
    return wide


def provenance(source: str, settings: dict, result: dict) -> dict:
    """What a compressed network's file records about itself: the network it came from, the settings of
    ``deep_compression`` and the test accuracy after each stage."""
    return {"source": source, "settings": settings,
            "stages": result["stages"][["stage", "test_acc"]].to_dict("records")}


def compression_splits(dataset, retrain_examples: int, test_examples: int, finetune_examples: int):
    """(the data pruning retrains on, with the test split every accuracy is measured on; the data the
    centroids are fine-tuned on): the first examples of each split, at most all of them."""
    return (dataset.take(retrain_examples, n_val=1, n_test=test_examples),
            dataset.take(finetune_examples, n_val=1, n_test=1))


# -- Figures ------------------------------------------------------------------------------------------
def plot_accuracy_curves(curves: pd.DataFrame, bits_rows: pd.DataFrame):
    """Test accuracy against the share of weights removed (pruned once, and in rounds with retraining) and
    against the bits of a weight's cluster index (clustered, then with fine-tuned centroids), per network."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, net in enumerate(sorted(curves.net.astype(str).unique())):
        for method, style in (("pruned once, no retraining", ":"), ("pruned in rounds, retrained", "-")):
            c = curves[(curves.net.astype(str) == net) & (curves.method == method)]
            ax1.plot(100 * c.weights_removed, 100 * c.test_acc, style, marker="o", color=f"C{i}",
                     label=f"Net-{net}, {method}")
        b = bits_rows[bits_rows.net.astype(str) == net]
        ax2.plot(b.bits, 100 * b.test_acc_clustered, ":", marker="o", color=f"C{i}", label=f"Net-{net}, clustered")
        ax2.plot(b.bits, 100 * b.test_acc_finetuned, "-", marker="o", color=f"C{i}",
                 label=f"Net-{net}, centroids fine-tuned")
    ax1.set(xlabel="weights removed (%)", ylabel="test accuracy (%)", title="P: accuracy against sparsity")
    ax2.set(xlabel="bits per weight index (k = 2^bits)", ylabel="test accuracy (%)",
            title="Q: accuracy against bits (on the pruned networks)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _room_for_the_stamp(fig)
    return fig


def plot_csr_speed(speed: pd.DataFrame):
    """Dense time over CSR time of the forward pass against the share of weights removed, per batch size."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for i, B in enumerate(sorted(speed.batch.unique())):
        s = speed[speed.batch == B]
        ax.plot(s.sparsity, s.csr_speedup, "o-", color=f"C{i}", label=f"batch {B:,}")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(yscale="log", xlabel="fraction of weights removed", ylabel="dense time / CSR time (> 1: CSR wins)",
           title="Net-1h forward pass: CSR (scipy) against dense (BLAS), one thread")
    ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,g}"))  # 0.1, 1, 10, not 10⁻¹
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _room_for_the_stamp(fig)
    return fig


def _room_for_the_stamp(fig) -> None:
    """Lay the axes out with a strip free at the bottom, where ``results.save_figure`` stamps the machine."""
    fig.tight_layout()
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.04)


# -- The command line: the study's compressed Net-1h from notebook 08's trained one -------------------
#: the paper profile's compression of Net-1h (lib/profiles.py, notebook 09; tests/test_compress.py keeps them equal)
PAPER = {"schedule": [[0.5, 0.3], [0.8, 0.5], [0.9, 0.6], [0.95, 0.7], [0.97, 0.75], [0.97, 0.75]],
         "bits": [4, 5], "retrain_examples": 50_000, "retrain_epochs": 1, "retrain_batch": 50, "retrain_lr": 0.5,
         "test_examples": 10_000, "finetune_examples": 10_000, "finetune_epochs": 1, "finetune_lr": 0.001, "seed": 0}


def parser():
    def round_(text):  # one pruning round: each layer's sparsity, comma-separated
        try:
            return [check_sparsity(float(v), "a round's sparsity") for v in text.split(",")]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None

    p = Parser(prog="python -m parbp.compress",
               description="Prune, quantize and Huffman-code a trained Net-1h (notebook 09's P+Q+H); write the "
                           "compressed network and print its size and test accuracy. Defaults: the paper profile.")
    p.add_argument("--model", default=str(BUILD / "models" / "net1h_mnist_paper.npz"),
                   help="the trained network (notebook 08 saves it under build/models/)")
    p.add_argument("--out", default=str(FIGURES / "09_net1h_compressed_paper.npz"), help="the compressed network")
    p.add_argument("--schedule", nargs="+", type=round_, default=PAPER["schedule"],
                   help="pruning rounds, each the layers' sparsities comma-separated (e.g. 0.5,0.3 0.8,0.5)")
    p.add_argument("--bits", nargs="+", type=positive_int, default=PAPER["bits"], help="cluster-index bits per layer")
    types = {"retrain_lr": positive_float, "finetune_lr": positive_float, "seed": nonnegative_int}
    for name in [k for k in PAPER if k not in ("schedule", "bits")]:
        p.add_argument("--" + name.replace("_", "-"), type=types.get(name, positive_int), default=PAPER[name])
    return p


def main(argv=None) -> int:
    """``python -m parbp.compress``: from build/models/net1h_mnist_paper.npz to figures/09_net1h_compressed_paper.npz"""
    args = parser().parse_args(argv)
    retrain, finetune = compression_splits(data.load("mnist"), args.retrain_examples, args.test_examples,
                                           args.finetune_examples)
    name = trainers.fastest_cpu()
    options = {"threads": 1} if "threads" in trainers.get(name).options else {}
    with trainers.make(name, net="1h", n_in=retrain.n_in, n_out=retrain.n_out, seed=args.seed, **options) as t:
        source = load_or_train(t, args.model)
        result = deep_compression(t, retrain, args.schedule, args.bits, args.retrain_epochs, args.retrain_batch,
                                  args.retrain_lr, args.finetune_epochs, args.finetune_lr, finetune_data=finetune,
                                  seed=args.seed, on_round=lambda row: print(f"round {row['round']}: test accuracy "
                                                                             f"{row['test_acc_retrained']:.2%}"))
    settings = {k: v for k, v in vars(args).items() if k not in ("model", "out")}
    path = save_compressed(args.out, result["shared"], provenance(source, settings, result))
    params, meta = load_compressed(path)
    acc = float(np.mean(predict_dense(params, retrain.X_test).argmax(1) == retrain.y_test))
    print(result["stages"].to_string(index=False))
    print(f"wrote {path}: {meta['stored_bytes'] / 1000:.1f} kB of P+Q+H streams ({path.stat().st_size / 1000:.1f} kB "
          f"file); decoded from it, test accuracy {acc:.2%} on {len(retrain.y_test):,} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main, prog="python -m parbp.compress"))
