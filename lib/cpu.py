"""CPU trainers: the paper's serial algorithm, its minibatch BLAS form, and four ways to use several cores.

    serial-example   seed 001 §3: one matrix-vector forward/backward per example (numba), one update per minibatch
    serial-blas      the same minibatch as three GEMMs per layer, BLAS pinned to one thread
    threads          the pthreads design: examples split across p workers for forward and backward, then the update
    blas-parallel    the minibatch form with p BLAS threads ("parallelize matrix computations", seed 000)
    hybrid           examples split across groups, BLAS threads inside each group (seed 000's future work)
    hogwild          lock-free asynchronous SGD (seed 002): p workers update the shared weights with no barrier

What is not a matrix product runs in small fused numba kernels, so a step makes no temporaries and touches
each activation once; the products go to BLAS (``parbp.blas``), transposed operands as views and outputs in
place, the update W ← W − lr·AᵀΔ itself one GEMM (beta = 1), so the gradient is never stored.
"""
from __future__ import annotations

import math
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

import llvmlite.ir
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

from .base import Trainer
from .cli import check_choice, check_positive_int
from .envinfo import usable_cores
from . import blas as _blas
from .blas import axpy, blas_threads, gemm_into, gemm_update

CORES = usable_cores()  # the default number of workers

# nogil: worker threads run the kernels truly in parallel. error_model="numpy": no ZeroDivisionError
# branch inside the loops, which is what lets LLVM vectorize them. fastmath: reassociate reductions.
_JIT = dict(nogil=True, fastmath=True, error_model="numpy", cache=True)

# -- Elementwise kernels ---------------------------------------------------------------------------
@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (how 2**n is built without a libm call)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, llvmlite.ir.IntType(32))
        return builder.bitcast(value, context.get_value_type(types.float32))

    return types.float32(bits), codegen


def fast_exp(x):
    """e**x. In numba, float32 gets a polynomial LLVM can vectorize (libm's expf cannot be: 7 ns vs 0.2 ns)."""
    return math.exp(x)


@overload(fast_exp, inline="always")
def _fast_exp_overload(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    def expf(x):
        # Cephes expf: e**x = 2**n · e**r with n = round(x / ln 2), |r| ≤ ln2/2; relative error < 3e-7.
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))  # keep 2**n a normal float32
        n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
        r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)  # ln 2 in two parts
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * (r * r) + r + np.float32(1.0)
        return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))

    return expf


#: float32's smallest normal number, 2**-126. σ(z) below it (z < −87.34) is defined to be 0: see ``sigmoid``.
FLOAT32_TINY = np.float32(np.finfo(np.float32).tiny)


def sigmoid(z):
    """σ(z) = 1/(1 + e**−z). In numba, float32 results below float32's smallest normal number are 0: whether a
    CPU delivers such subnormals depends on FTZ/DAZ bits and on the reciprocal LLVM picks (Intel's VRCPPS
    flushes them, AMD Zen 4's VRCP14PS does not); flushing explicitly makes every CPU agree (error < 1.2e-38)."""
    return 1.0 / (1.0 + math.exp(-z))


@overload(sigmoid, inline="always")
def _sigmoid_overload(z):
    if z != types.float32:
        return lambda z: 1.0 / (1.0 + math.exp(-z))

    def sigmoid32(z):
        s = np.float32(1.0) / (np.float32(1.0) + fast_exp(-z))
        return s if s >= FLOAT32_TINY else np.float32(0.0)

    return sigmoid32


@numba.njit(**_JIT)
def bias_sigmoid(Z, b):
    """Z ← σ(Z + b) in place (eqs. 4-5 after the GEMM): bias and activation in one pass over Z."""
    for i in range(Z.shape[0]):
        for j in range(Z.shape[1]):
            Z[i, j] = sigmoid(Z[i, j] + b[j])


@numba.njit(**_JIT)
def output_delta(A, Y, D, scale):
    """D ← scale·(A − Y)∘A∘(1 − A) (eq. 7 with scale = 2/B); returns Σ(A − Y)², accumulated in float64."""
    sse = 0.0
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            a = A[i, j]
            err = a - Y[i, j]
            sse += err * err
            D[i, j] = scale * err * a * (np.float32(1.0) - a)
    return sse


@numba.njit(**_JIT)
def hidden_delta(D, A):
    """D ← D∘A∘(1 − A) in place: eq. 8's Hadamard product with σ' after the GEMM D = Δ Wᵀ."""
    for i in range(D.shape[0]):
        for j in range(D.shape[1]):
            a = A[i, j]
            D[i, j] *= a * (np.float32(1.0) - a)


@numba.njit(**_JIT)
def column_sums(D, out):
    """out ← Σ_i D[i, :] (the bias gradient, eq. 9), row by row so the inner loop is contiguous."""
    out[:] = 0
    for i in range(D.shape[0]):
        for j in range(D.shape[1]):
            out[j] += D[i, j]


@numba.njit(**_JIT)
def bias_update(b, D, lr):
    """b ← b − lr·Σ_i D[i, :]."""
    for i in range(D.shape[0]):
        for j in range(D.shape[1]):
            b[j] -= lr * D[i, j]


@numba.njit(**_JIT)
def reduce_update(W, partials, lr, r0, r1):
    """W[r0:r1] ← W[r0:r1] − lr·Σ_k partials[k, r0:r1]: the reduction and the update in one pass."""
    for i in range(r0, r1):
        for k in range(partials.shape[0]):
            for j in range(W.shape[1]):
                W[i, j] -= lr * partials[k, i, j]


# -- The paper's serial algorithm: one example at a time -------------------------------------------
@numba.njit(**_JIT)
def example_by_example_step(Ws, bs, gWs, gbs, acts, deltas, X, Y, lr, scale):
    """One minibatch step of seed 001's serial backpropagation; returns Σ(a_L − y)² over the minibatch:
    the gradient example by example, then one update."""
    sse = example_gradients(Ws, bs, gWs, gbs, acts, deltas, X, Y, scale)
    for l in range(len(Ws)):
        W, b, gW, gb = Ws[l], bs[l], gWs[l], gbs[l]
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                W[i, j] -= lr * gW[i, j]
        for j in range(b.shape[0]):
            b[j] -= lr * gb[j]
    return sse


@numba.njit(**_JIT)
def example_gradients(Ws, bs, gWs, gbs, acts, deltas, X, Y, scale):
    """Seed 001's serial backpropagation over the rows of X, example by example (matrix-vector forward, eqs.
    4-5; backward, eqs. 7-9), its outer products summed into ``gWs``, ``gbs``; returns Σ(a_L − y)². The weights
    are only read, so threads may run it on their own examples at once (the paper's design)."""
    L = len(Ws)
    for l in range(L):
        gWs[l][:] = 0
        gbs[l][:] = 0
    sse = 0.0
    for n in range(X.shape[0]):
        acts[0][:] = X[n]
        for l in range(L):  # forward: z = Wᵀa + b, as a sum of the rows of W scaled by a
            W, a, z = Ws[l], acts[l], acts[l + 1]
            z[:] = bs[l]
            for i in range(W.shape[0]):
                ai = a[i]
                for j in range(W.shape[1]):
                    z[j] += ai * W[i, j]
            for j in range(z.shape[0]):
                z[j] = sigmoid(z[j])
        out, d = acts[L], deltas[L - 1]
        for j in range(out.shape[0]):  # eq. 7
            err = out[j] - Y[n, j]
            sse += err * err
            d[j] = scale * err * out[j] * (np.float32(1.0) - out[j])
        for l in range(L - 1, -1, -1):
            W, a, d, gW, gb = Ws[l], acts[l], deltas[l], gWs[l], gbs[l]
            for j in range(d.shape[0]):
                gb[j] += d[j]
            for i in range(W.shape[0]):  # one pass over row i of W: eq. 8 (a dot) and eq. 9 (an axpy)
                ai = a[i]
                if l > 0:
                    s = W[i, 0] * d[0]
                    for j in range(1, W.shape[1]):
                        s += W[i, j] * d[j]
                    deltas[l - 1][i] = s * ai * (np.float32(1.0) - ai)
                for j in range(W.shape[1]):
                    gW[i, j] += ai * d[j]
    return sse


# -- Trainers --------------------------------------------------------------------------------------
def forward_matrix(Ws, bs, X, chunk=4096):
    """Output activations for many rows (predict), a chunk of rows at a time to bound memory."""
    out = np.empty((X.shape[0], Ws[-1].shape[1]), dtype=X.dtype)
    for r0 in range(0, X.shape[0], chunk):
        a = X[r0 : r0 + chunk]
        for W, b in zip(Ws, bs):
            z = np.empty((a.shape[0], W.shape[1]), dtype=X.dtype)
            gemm_into(a, W, z)
            bias_sigmoid(z, b)
            a = z
        out[r0 : r0 + chunk] = a
    return out


def _check_count(trainer, option, value):
    return check_positive_int(f"trainer {trainer.name!r}: {option}", value)


def split_rows(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous near-equal ranges covering ``range(n)`` (fewer if n < parts; none empty)."""
    return [share(n, min(parts, n), k) for k in range(min(parts, n))]


def share(n: int, parts: int, k: int) -> tuple[int, int]:
    """Worker k's contiguous range of ``range(n)`` split ``parts`` ways (empty if n < parts and k is late)."""
    return n * k // parts, n * (k + 1) // parts


class _ParamsTrainer(Trainer):
    """Holds the parameters as C-ordered arrays the kernels update in place."""

    family = "kernels"

    def _setup(self, params):
        self.W = [np.ascontiguousarray(W) for W, _ in params]
        self.b = [np.ascontiguousarray(b) for _, b in params]

    def _get_params(self):
        return [(W.copy(), b.copy()) for W, b in zip(self.W, self.b)]

    def _set_params(self, params):
        for W, b, (W_new, b_new) in zip(self.W, self.b, params):
            W[...] = W_new
            b[...] = b_new


class SerialExampleTrainer(_ParamsTrainer):
    """Seed 001's serial algorithm: a numba loop over the examples, matrix-vector products only."""

    name = "serial-example"

    def _setup(self, params):
        super()._setup(params)
        self._gW = tuple(np.zeros_like(W) for W in self.W)
        self._gb = tuple(np.zeros_like(b) for b in self.b)
        self._acts = tuple(np.zeros(n, dtype=self.dtype) for n in self.sizes)
        self._deltas = tuple(np.zeros(n, dtype=self.dtype) for n in self.sizes[1:])

    def _step(self, X, Y, lr):
        B = X.shape[0]
        t = self.dtype.type
        sse = example_by_example_step(tuple(self.W), tuple(self.b), self._gW, self._gb, self._acts, self._deltas,
                                      X, Y, t(lr), t(2.0 / B))
        return sse / B

    def _predict(self, X):
        with blas_threads(1):
            return forward_matrix(self.W, self.b, X)


class MatrixTrainer(_ParamsTrainer):
    """The minibatch matrix form, its examples split across ``groups`` workers with ``blas`` BLAS threads each.

    Each worker runs forward (A_l ← σ(A_{l-1}W_l + b_l)) and backward (Δ_L ← 2/B (A_L − Y)∘σ',
    Δ_{l-1} ← (Δ_l W_lᵀ)∘σ') on its rows, a GEMM and a fused kernel per layer. Then, from the old weights'
    deltas, the update W_l ← W_l − lr·A_{l-1}ᵀΔ_l over all the examples, shared among workers (``update``):
      "rows"      worker k updates its block of rows of every W from the whole minibatch: one GEMM with
                  beta = 1 per layer; no gradient is stored.
      "partials"  the paper's pthreads: worker k writes G_k = A_kᵀΔ_k, then one pass, its rows split across
                  the workers, reduces and updates, W ← W − lr·Σ_k G_k (p + 1 weight-sized reads a step).
    Subclasses fix ``groups``, ``blas`` and ``update`` from their options.
    """

    name = "matrix"
    matrix = True
    UPDATES = ("rows", "partials")

    def _workers(self) -> tuple[int, int]:
        """(groups of examples, BLAS threads per group)."""
        raise NotImplementedError

    def _setup(self, params):
        self.groups, self.blas = self._workers()
        self.update = check_choice(f"trainer {self.name!r}: update", self.opts.get("update", "rows"), self.UPDATES)
        super()._setup(params)
        self._capacity = 0
        self._partials = None
        self._pool = None
        if self.groups > 1:
            # the calling thread works as group 0, so the pool needs groups − 1 threads
            self._pool = ThreadPoolExecutor(self.groups - 1, thread_name_prefix=f"parbp-{self.name}")
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False)
        self._closed = False

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._finalizer.detach()
            self._pool = None
        self._closed = True

    # -- buffers, allocated once for the largest minibatch seen ---------------------------------
    def _buffers(self, B):
        if B > self._capacity:
            self._acts = [np.empty((B, n), dtype=self.dtype) for n in self.sizes[1:]]
            self._deltas = [np.empty((B, n), dtype=self.dtype) for n in self.sizes[1:]]
            self._capacity = B
        return [a[:B] for a in self._acts], [d[:B] for d in self._deltas]

    def _partial_buffers(self, parts):
        if self._partials is None or self._partials[0].shape[0] < parts:
            self._partials = [np.empty((parts, *W.shape), dtype=self.dtype) for W in self.W]
            self._partial_b = [np.empty((parts, *b.shape), dtype=self.dtype) for b in self.b]
        return self._partials, self._partial_b

    # -- the work of one group of rows ------------------------------------------------------------
    def _choose_backend(self, rows: int) -> str:
        """The BLAS for GEMMs over ``rows`` examples per worker (``parbp.blas.decide``), kept with its reason."""
        self.gemm_backend, self.gemm_reason = _blas.decide(rows, self.blas)
        return self.gemm_backend

    def _forward_backward(self, X, Y, r0, r1, acts, deltas, scale):
        """Activations and deltas of rows r0:r1 into the shared buffers; returns their Σ(A − Y)²."""
        L, backend = len(self.W), self.gemm_backend
        a = X[r0:r1]
        for l in range(L):
            z = acts[l][r0:r1]
            gemm_into(a, self.W[l], z, backend=backend)
            bias_sigmoid(z, self.b[l])
            a = z
        sse = output_delta(a, Y[r0:r1], deltas[L - 1][r0:r1], scale)
        for l in range(L - 1, 0, -1):
            d = deltas[l - 1][r0:r1]
            gemm_into(deltas[l][r0:r1], self.W[l], d, trans_b=True, backend=backend)
            hidden_delta(d, acts[l - 1][r0:r1])
        return sse

    def _run(self, task, n):
        """task(0..n-1) with task 0 on the calling thread; re-raises the first worker error."""
        futures = [self._pool.submit(task, k) for k in range(1, n)] if n > 1 else []
        try:
            first = task(0)
        except BaseException:
            wait(futures)  # never leave workers writing into buffers the caller may reuse
            raise
        return [first, *(f.result() for f in futures)]

    def _sums_partials(self, parts: int) -> bool:
        """Whether a step over ``parts`` workers goes through the paper's partial gradients."""
        return self.update == "partials" and parts > 1

    def _prepare(self, X):
        """(B, each worker's rows, activation buffers, delta buffers) for a minibatch X."""
        if self._closed:
            raise RuntimeError(f"trainer {self.name!r} was closed; make a new one")
        B = X.shape[0]
        rows = split_rows(B, self.groups)
        self._choose_backend(rows[0][1] - rows[0][0])
        return B, rows, *self._buffers(B)

    def _start(self, X, Y):
        """Forward and backward on every worker's rows: (B, workers, layer inputs A_{l-1}, deltas, Σ(A − Y)²)."""
        B, rows, acts, deltas = self._prepare(X)
        scale = self.dtype.type(2.0 / B)
        partials = self._sums_partials(len(rows))

        def forward_backward(k):
            r0, r1 = rows[k]
            sse = self._forward_backward(X, Y, r0, r1, acts, deltas, scale)
            for l in range(len(self.W)) if partials else ():  # the paper: each worker's partial gradient
                a = X[r0:r1] if l == 0 else acts[l - 1][r0:r1]
                gemm_into(a, deltas[l][r0:r1], self._partials[l][k], trans_a=True, backend=self.gemm_backend)
                column_sums(deltas[l][r0:r1], self._partial_b[l][k])
            return sse

        if partials:
            self._partial_buffers(len(rows))
        sse = sum(self._run(forward_backward, len(rows)))
        return B, len(rows), [X, *acts[:-1]], deltas, sse

    # -- the interface -----------------------------------------------------------------------------
    def _step(self, X, Y, lr):
        lr = self.dtype.type(lr)
        with blas_threads(self.blas):
            B, parts, inputs, deltas, sse = self._start(X, Y)

            def update_rows(k):  # worker k: its rows of every W, its entries of every b
                for A, D, W, b in zip(inputs, deltas, self.W, self.b):
                    r0, r1 = share(W.shape[0], parts, k)
                    gemm_update(A[:, r0:r1], D, W[r0:r1], lr, backend=self.gemm_backend)
                    c0, c1 = share(b.shape[0], parts, k)
                    bias_update(b[c0:c1], D[:, c0:c1], lr)

            def reduce_partials(k):  # worker k: Σ of the partial gradients over its rows, and the update
                for W, G in zip(self.W, self._partials):
                    reduce_update(W, G[:parts], lr, *share(W.shape[0], parts, k))

            if self._sums_partials(parts):
                self._run(reduce_partials, parts)
                for b, gb in zip(self.b, self._partial_b):
                    b -= lr * gb[:parts].sum(axis=0)
            else:
                self._run(update_rows, parts)
        return sse / B

    def _gradients(self, X, Y):
        grads = [(np.empty_like(W), np.empty_like(b)) for W, b in zip(self.W, self.b)]
        with blas_threads(self.blas):
            B, parts, inputs, deltas, sse = self._start(X, Y)

            def gradient_rows(k):  # as update_rows, the gradient stored instead of applied
                for A, D, (gW, gb) in zip(inputs, deltas, grads):
                    r0, r1 = share(gW.shape[0], parts, k)
                    gemm_into(A[:, r0:r1], D, gW[r0:r1], trans_a=True, backend=self.gemm_backend)
                    c0, c1 = share(gb.shape[0], parts, k)
                    column_sums(D[:, c0:c1], gb[c0:c1])

            if self._sums_partials(parts):
                for (gW, gb), G, Gb in zip(grads, self._partials, self._partial_b):
                    np.sum(G[:parts], axis=0, out=gW)
                    np.sum(Gb[:parts], axis=0, out=gb)
            else:
                self._run(gradient_rows, parts)
        return sse / B, grads

    def _apply_gradients(self, grads, lr):
        grads = self._check_layers(grads, "dW", "db", np.ascontiguousarray)
        lr = self.dtype.type(lr)
        parts = self.groups if self._pool is not None else 1

        def update(k):
            for W, (gW, _) in zip(self.W, grads):
                r0, r1 = share(W.shape[0], parts, k)
                axpy(W[r0:r1], gW[r0:r1], lr)

        self._run(update, parts)
        for b, (_, gb) in zip(self.b, grads):
            b -= lr * gb

    def _predict(self, X):
        with blas_threads(self.blas * self.groups):
            return forward_matrix(self.W, self.b, X)


class SerialBlasTrainer(MatrixTrainer):
    """The minibatch matrix form on one core: single-threaded BLAS GEMMs and fused numba kernels."""

    name = "serial-blas"

    def _workers(self):
        return 1, 1


class ThreadsTrainer(MatrixTrainer):
    """The paper's pthreads design: the minibatch split across ``threads`` workers, each running forward
    and backward on its examples with single-threaded BLAS (which releases the GIL). The update is
    shared by rows of W (``update="rows"``, the default) or, as in the paper, by summing the workers'
    partial gradients (``update="partials"``); see ``MatrixTrainer``."""

    name = "threads"
    options = {"threads": CORES, "update": "rows"}

    def _workers(self):
        return _check_count(self, "threads", self.opts["threads"]), 1


class BlasParallelTrainer(MatrixTrainer):
    """The minibatch matrix form with ``threads`` BLAS threads: each matrix product is parallelized."""

    name = "blas-parallel"
    options = {"threads": CORES}

    def _workers(self):
        return 1, _check_count(self, "threads", self.opts["threads"])


class HybridTrainer(MatrixTrainer):
    """``threads`` threads in all: the examples split across ``groups`` workers (None: 2 when ``threads`` is
    even, else 1), each with ``threads // groups`` BLAS threads; ``update`` as for ``threads``. OpenBLAS
    serializes multi-threaded GEMMs from several threads, so such groups overlap only outside their GEMMs."""

    name = "hybrid"
    options = {"threads": CORES, "groups": None, "update": "rows"}

    def _workers(self):
        threads = _check_count(self, "threads", self.opts["threads"])
        groups = self.opts["groups"]
        groups = (2 if threads % 2 == 0 else 1) if groups is None else _check_count(self, "groups", groups)
        if threads % groups:
            raise ValueError(f"trainer {self.name!r}: groups ({groups}) must divide threads ({threads}) "
                             f"so every group gets the same number of BLAS threads")
        return groups, threads // groups


class HogwildTrainer(MatrixTrainer):
    """Lock-free asynchronous SGD on one node (Hogwild!, seed 002): each of ``threads`` workers walks its share
    of the minibatch ``microbatch`` examples at a time, updating the shared weights at once, with no lock or
    barrier (lr/B per example: one worker with ``microbatch = B`` is synchronous SGD). The loss returned is
    measured on the weights each microbatch saw."""

    name = "hogwild"
    exact = False
    options = {"threads": CORES, "microbatch": 10}

    def _workers(self):
        self.microbatch = _check_count(self, "microbatch", self.opts["microbatch"])
        return _check_count(self, "threads", self.opts["threads"]), 1

    def _step(self, X, Y, lr):
        B, rows, acts, deltas = self._prepare(X)
        self._choose_backend(self.microbatch)
        t = self.dtype.type
        scale, lr = t(2.0 / B), t(lr)
        inputs = [X, *acts[:-1]]

        def worker(k):
            sse = 0.0
            for r0 in range(rows[k][0], rows[k][1], self.microbatch):
                r1 = min(r0 + self.microbatch, rows[k][1])
                sse += self._forward_backward(X, Y, r0, r1, acts, deltas, scale)
                for A, D, W, b in zip(inputs, deltas, self.W, self.b):
                    # racy on purpose: other workers read and write these same weights meanwhile
                    gemm_update(A[r0:r1], D[r0:r1], W, lr, backend=self.gemm_backend)
                    bias_update(b, D[r0:r1], lr)
            return sse

        with blas_threads(1):
            return sum(self._run(worker, len(rows))) / B

    def _gradients(self, X, Y):
        raise NotImplementedError("hogwild updates as it goes; it has no gradient of the whole minibatch to return")

    def _apply_gradients(self, grads, lr):
        raise NotImplementedError("hogwild updates as it goes; apply gradients with a synchronous trainer")
