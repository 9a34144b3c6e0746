"""Compressing a trained network (seed 002, "Compressing a network"; Han et al., Deep Compression, 2016).

Three steps, each undoing less accuracy than it saves memory:

    P  prune       magnitude pruning in rounds: drop each layer's smallest weights, retrain with the mask
                   held (pruned weights get no gradient, so they stay zero), prune further, retrain again
    Q  quantize    weight sharing: k-means (k = 2^bits) on each layer's surviving weights, linear
                   initialization as in Deep Compression; each weight stores a lg k-bit cluster index; the
                   centroids are then fine-tuned by the summed gradients of their members
    H  Huffman     the cluster indices and the CSR index gaps, Huffman-coded, bits counted from the codes

The pruned weights are stored as CSR (``scipy.sparse``), one row per output unit: Wᵀ, because a unit's
incoming weights are what its dot product reads. On disk (the P+Q / P+Q+H sizes) the column index of
each nonzero is stored as the gap from the previous nonzero in row-major order (``relative_positions``):
gaps that do not fit in ``index_bits`` are split by escape symbols that skip 2^bits − 1 positions.
Every size counts everything needed to rebuild the layer: streams, codebook (float32 centroids),
Huffman code lengths and the float32 biases.
"""
from __future__ import annotations

import heapq
import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit as sigmoid

from .train import accuracy, shuffled_batches

FLOAT_BITS = 32  # the uncompressed network: float32


# ---------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------
def check_sparsity(value, name: str = "sparsity") -> float:
    """A fraction of weights to remove, in [0, 1) (removing all of a layer's weights disconnects it)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value < 1.0
    if not ok:
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


# ---------------------------------------------------------------------------------------------------
# P: magnitude pruning with retraining
# ---------------------------------------------------------------------------------------------------
def magnitude_masks(params, sparsity) -> list[np.ndarray]:
    """Boolean masks keeping each layer's largest-magnitude weights; ``sparsity`` (one fraction, or one
    per layer) is the share removed. Ties at the threshold are broken by position, so the count is exact."""
    sparsity = _per_layer(sparsity, len(params), check_sparsity, "sparsity")
    masks = []
    for (W, _), s in zip(params, sparsity):
        drop = int(round(s * W.size))
        order = np.argsort(np.abs(W), axis=None, kind="stable")
        keep = np.ones(W.size, dtype=bool)
        keep[order[:drop]] = False
        masks.append(keep.reshape(W.shape))
    return masks


def apply_masks(params, masks):
    return [(W * M, b) for (W, b), M in zip(params, masks)]


def sparsity_of(masks) -> list[float]:
    return [1.0 - float(M.mean()) for M in masks]


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
    decreasing), prune to it by magnitude and retrain ``epochs`` with the mask held.
    Returns the final masks and one row per round: per-layer sparsity, test accuracy before and after
    retraining. ``on_round(row)`` is called after each round (progress)."""
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


# ---------------------------------------------------------------------------------------------------
# CSR storage and sparse inference
# ---------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# Q: weight sharing by k-means
# ---------------------------------------------------------------------------------------------------
def kmeans_1d(values, k: int, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm on scalars with linear initialization (k centroids evenly spaced between the
    smallest and largest value, which Deep Compression found best: it keeps the rare large weights).
    Returns (sorted centroids, label of each value). In 1-D the nearest centroid is found by bisection
    on the midpoints between sorted centroids."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("kmeans_1d needs at least one value")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    centroids = np.linspace(values.min(), values.max(), k)
    for _ in range(iterations):
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        counts = np.bincount(labels, minlength=k)
        sums = np.bincount(labels, weights=values, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)  # empty clusters stay put
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(updated)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
    return centroids, labels


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

    def csr(self) -> sp.csr_matrix:
        """Wᵀ in CSR, its values looked up in the codebook (what a sparse inference engine multiplies)."""
        return sp.csr_matrix(np.ascontiguousarray(self.dense().T))

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.centroids))))


def share_weights(params, masks, bits) -> list[SharedLayer]:
    """k-means with k = 2**bits on each layer's surviving weights (``bits``: one, or one per layer)."""
    bits = _per_layer(bits, len(params), check_bits, "bits")
    layers = []
    for (W, b), M, nb in zip(params, masks, bits):
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


# ---------------------------------------------------------------------------------------------------
# H: Huffman coding
# ---------------------------------------------------------------------------------------------------
@dataclass
class HuffmanCode:
    """A canonical Huffman code over the symbols 0..n-1: code lengths define it completely, so storing
    it takes one length per symbol (``table_bits``).

    Hand-written with ``heapq`` on purpose: the coders on PyPI either add an end-of-file symbol to every
    code (dahuffman), which changes the lengths being measured, or are unmaintained; this one is 40 lines.
    """

    lengths: np.ndarray  # (n_symbols,) bits of each symbol's code, 0 for symbols that never occur
    codes: np.ndarray    # (n_symbols,) the codes as integers (canonical order)

    @classmethod
    def fit(cls, symbols, n_symbols: int | None = None) -> "HuffmanCode":
        symbols = np.asarray(symbols, dtype=np.int64)
        if symbols.size == 0 or symbols.min() < 0:
            raise ValueError("Huffman coding needs a non-empty sequence of non-negative integer symbols")
        n_symbols = int(symbols.max()) + 1 if n_symbols is None else n_symbols
        counts = np.bincount(symbols, minlength=n_symbols)
        lengths = np.zeros(n_symbols, dtype=np.int64)
        present = np.flatnonzero(counts)
        if len(present) == 1:
            lengths[present] = 1  # one symbol still needs one bit per occurrence to be counted
        else:
            # heap of (weight, tiebreak, symbols in the subtree): merging two subtrees lengthens their codes
            heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(present)]
            heapq.heapify(heap)
            tiebreak = len(heap)
            while len(heap) > 1:
                w1, _, s1 = heapq.heappop(heap)
                w2, _, s2 = heapq.heappop(heap)
                lengths[s1 + s2] += 1
                heapq.heappush(heap, (w1 + w2, tiebreak, s1 + s2))
                tiebreak += 1
        return cls(lengths, _canonical_codes(lengths))

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
            symbol = by_code.get((length, code))
            if symbol is not None:
                out.append(symbol)
                code, length = 0, 0
        if length:
            raise ValueError("the bit stream ends inside a code")
        return np.array(out, dtype=np.int64)


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes: symbols sorted by (length, symbol) get consecutive codes."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - previous
        codes[s], previous = code, int(lengths[s])
        code += 1
    return codes


# ---------------------------------------------------------------------------------------------------
# The stored layer: relative positions, codebook, sizes
# ---------------------------------------------------------------------------------------------------
def relative_positions(mask_t: np.ndarray, index_bits: int) -> np.ndarray:
    """The gap stream of a CSR matrix's nonzeros in row-major order: for each nonzero, the number of
    zeros skipped since the previous one. Gaps ≥ E = 2^bits − 1 emit the escape symbol E (skip E
    positions, no weight) as many times as needed, then the remainder."""
    escape = 2 ** check_bits(index_bits, "index_bits") - 1
    positions = np.flatnonzero(mask_t)
    gaps = np.diff(positions, prepend=-1) - 1
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
    advance = np.where(is_gap, stream + 1, escape)
    return (np.cumsum(advance) - 1)[is_gap]


def _weight_symbols(layer: SharedLayer) -> np.ndarray:
    """The cluster index of every nonzero in CSR order (row-major over Wᵀ)."""
    labels = np.full(layer.mask.shape, -1, dtype=np.int64)
    labels[layer.mask] = layer.labels
    return labels.T[layer.mask.T]


def encode_layer(layer: SharedLayer, index_bits: int) -> dict:
    """The layer as it would be stored after P+Q+H: the Huffman-coded cluster indices and gap stream
    (packed bytes and their exact bit counts), the two code tables, the codebook and the biases."""
    gaps = relative_positions(layer.mask.T, index_bits)
    weights = _weight_symbols(layer)
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


def stored_bits(layer: SharedLayer, max_index_bits: int = 12) -> dict:
    """The stored size of one layer, P+Q (fixed-width fields) and P+Q+H (Huffman-coded, the bit counts
    of the real encoded streams), the index width of each chosen to minimize it. The codebook (float32
    centroids) and the biases count in both, the Huffman tables in P+Q+H."""
    nnz = int(layer.mask.sum())
    extra = (len(layer.centroids) + len(layer.bias)) * FLOAT_BITS
    # P+Q: fixed-width gap fields, the width that makes the stream shortest
    index_pq = {ib: len(relative_positions(layer.mask.T, ib)) * ib for ib in range(1, max_index_bits + 1)}
    width_pq = min(index_pq, key=index_pq.get)
    # P+Q+H: encode with every width, keep the shortest
    best = None
    for ib in range(1, max_index_bits + 1):
        stored = encode_layer(layer, ib)
        bits = stored["gaps"][1] + stored["gap_code"].table_bits
        if best is None or bits < best[1]:
            best = (ib, bits, stored)
    width_pqh, index_pqh, stored = best
    weight_pqh = stored["weights"][1] + stored["weight_code"].table_bits
    return {
        "weights": layer.mask.size, "nonzeros": nnz, "k": len(layer.centroids),
        "weight_bits_pq": nnz * layer.bits, "weight_bits_pqh": weight_pqh,
        "index_width_pq": width_pq, "index_bits_pq": index_pq[width_pq],
        "index_width_pqh": width_pqh, "index_bits_pqh": index_pqh,
        "codebook_and_bias_bits": extra,
        "total_bits_pq": nnz * layer.bits + index_pq[width_pq] + extra,
        "total_bits_pqh": weight_pqh + index_pqh + extra,
        "original_bits": (layer.mask.size + len(layer.bias)) * FLOAT_BITS,
    }


def compression_table(layers: list[SharedLayer], names=None) -> pd.DataFrame:
    """Seed 002's table (Deep Compression's): per layer and in total, #weights, weights % kept after P,
    bits per weight and per index after P+Q and P+Q+H, and the compressed size as % of float32."""
    names = names or [f"fc{l + 1}" for l in range(len(layers))]
    raw = pd.DataFrame([stored_bits(L) for L in layers], index=names)
    total = raw.sum(numeric_only=True)
    raw.loc["total"] = total
    t = pd.DataFrame(index=raw.index)
    t["#weights"] = raw.weights.astype(int)
    t["weights % (P)"] = 100 * raw.nonzeros / raw.weights
    t["weight bits (P+Q)"] = raw.weight_bits_pq / raw.nonzeros
    t["weight bits (P+Q+H)"] = raw.weight_bits_pqh / raw.nonzeros
    t["index bits (P+Q)"] = raw.index_bits_pq / raw.nonzeros
    t["index bits (P+Q+H)"] = raw.index_bits_pqh / raw.nonzeros
    t["compress rate (P+Q) %"] = 100 * raw.total_bits_pq / raw.original_bits
    t["compress rate (P+Q+H) %"] = 100 * raw.total_bits_pqh / raw.original_bits
    t["index width"] = raw.index_width_pqh.astype("Int64")  # bits of the gap alphabet chosen for P+Q+H
    t.loc["total", "index width"] = pd.NA
    t["bytes (P+Q+H)"] = raw.total_bits_pqh / 8
    t["× smaller (P+Q+H)"] = raw.original_bits / raw.total_bits_pqh
    return t


# ---------------------------------------------------------------------------------------------------
# The whole pipeline on one trained network
# ---------------------------------------------------------------------------------------------------
def deep_compression(trainer, dataset, schedule, bits, retrain_epochs: int, batch_size: int, lr: float,
                     finetune_epochs: int, finetune_lr: float, bits_curve=(), finetune_data=None, seed: int = 0,
                     on_round=None) -> dict:
    """P, then Q, then H on ``trainer``'s (trained) network; the test accuracy after every stage.

    ``schedule``: the pruning rounds (see ``prune_in_rounds``); ``bits``: the final cluster-index width
    (one, or one per layer); ``bits_curve``: widths to sweep (same for every layer) for the accuracy-
    against-bits curve, each quantized from the pruned network and fine-tuned like the final one;
    ``finetune_data``: the examples the centroids are fine-tuned on (default: ``dataset``, which
    retrains the pruned network); the test split is always ``dataset``'s.
    Returns a dict of tables: ``rounds``, ``bits_curve``, ``stages``, ``table`` (seed 002's columns),
    and the final ``masks`` and ``shared`` layers. Leaves the P+Q+H network (decoded) in the trainer.
    """
    acc = lambda: accuracy(trainer, dataset.X_test, dataset.y_test)
    dense_acc = acc()
    masks, rounds = prune_in_rounds(trainer, dataset, schedule, retrain_epochs, batch_size, lr, seed, on_round)
    pruned = trainer.params
    pruned_acc = acc()

    def quantize(b):
        trainer.params = pruned
        shared = share_weights(pruned, masks, b)
        trainer.params = dequantize(shared)
        before = acc()
        finetune_centroids(shared, trainer, dataset if finetune_data is None else finetune_data, finetune_epochs, batch_size, finetune_lr, seed)
        return shared, before, acc()

    curve = []
    for b in bits_curve:
        _, before, after = quantize(b)
        curve.append({"bits": b, "test_acc_clustered": before, "test_acc_finetuned": after})
    shared, clustered_acc, quantized_acc = quantize(bits)
    table = compression_table(shared)
    # H is lossless: the network is rebuilt from the encoded streams and evaluated again
    trainer.params = [(decode_layer(encode_layer(L, int(row["index width"]))), L.bias)
                      for L, (_, row) in zip(shared, table.iloc[:-1].iterrows())]
    huffman_acc = acc()
    total = table.loc["total"]
    original = sum(W.size + b.size for W, b in pruned) * FLOAT_BITS / 8
    stages = pd.DataFrame([
        {"stage": "dense (float32)", "test_acc": dense_acc, "bytes": original, "x_smaller": 1.0},
        {"stage": "P (pruned, retrained)", "test_acc": pruned_acc, "weights_kept": 1 - rounds.weights_removed.iloc[-1]},
        {"stage": "P+Q (clustered)", "test_acc": clustered_acc},
        {"stage": "P+Q (centroids fine-tuned)", "test_acc": quantized_acc,
         "bytes": original * total["compress rate (P+Q) %"] / 100, "x_smaller": 100 / total["compress rate (P+Q) %"]},
        {"stage": "P+Q+H (decoded from the Huffman streams)", "test_acc": huffman_acc,
         "bytes": total["bytes (P+Q+H)"], "x_smaller": total["× smaller (P+Q+H)"]},
    ])
    stages["accuracy_lost_points"] = 100 * (dense_acc - stages.test_acc)
    return {"rounds": rounds, "bits_curve": pd.DataFrame(curve), "stages": stages, "table": table,
            "masks": masks, "shared": shared}


def inference_speed(params, sparsities, batches, repeats: int = 7, seed: int = 0) -> pd.DataFrame:
    """Seconds per forward pass, dense (numpy's BLAS, one thread) against CSR (scipy.sparse, which is
    single-threaded), with every layer magnitude-pruned to each sparsity: the best of ``repeats`` runs.
    Where does sparse start to win? CSR does 2 flops per nonzero but reads an index per nonzero and
    cannot block for the cache as a GEMM does; at batch 1 both are memory-bound matrix-vector products."""
    import time

    from .blas import blas_threads

    rng = np.random.default_rng(seed)
    rows = []
    with blas_threads(1):
        for s in sparsities:
            pruned = apply_masks(params, magnitude_masks(params, check_sparsity(s)))
            dense = [(np.ascontiguousarray(W, dtype=np.float32), b.astype(np.float32)) for W, b in pruned]
            sparse = to_csr(dense)
            for B in batches:
                X = rng.random((B, params[0][0].shape[0]), dtype=np.float32)
                for kind, run in (("dense", lambda: predict_dense(dense, X)), ("csr", lambda: predict_csr(sparse, X))):
                    run()  # warm
                    best = math.inf
                    for _ in range(repeats):
                        start = time.perf_counter()
                        run()
                        best = min(best, time.perf_counter() - start)
                    rows.append({"sparsity": s, "batch": B, "kind": kind, "seconds": best})
    df = pd.DataFrame(rows)
    wide = df.pivot_table(index=["sparsity", "batch"], columns="kind", values="seconds").reset_index()
    wide["csr_speedup"] = wide.dense / wide.csr
    return wide
