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
from .blas import axpy, blas_threads, decide, gemm_into, gemm_update

CORES = usable_cores()  # the default number of workers
UPDATES = ("rows", "partials")  # how the matrix trainers share the update (see MatrixTrainer)

# nogil: worker threads run the kernels truly in parallel. error_model="numpy": no ZeroDivisionError
# branch inside the loops, which is what lets LLVM vectorize them. fastmath: reassociate reductions.
_JIT = dict(nogil=True, fastmath=True, error_model="numpy", cache=True)

# -- Elementwise kernels ---------------------------------------------------------------------------
@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (how 2**n is built without a libm call)."""
    def codegen(context, builder, signature, args):
        value = builder.trunc(args[0], llvmlite.ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(value, context.get_value_type(types.float32))

    return types.float32(bits), codegen


@numba.njit(inline="always")
def fast_exp32(x):
    """e**x for a float32: a polynomial LLVM can vectorize (libm's expf cannot be: 7 ns vs 0.2 ns). Cephes expf:
    e**x = 2**n · e**r with n = round(x / ln 2), |r| ≤ ln2/2; relative error < 3e-7."""
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


#: float32's smallest normal number, 2**-126. σ(z) below it (z < −87.34) is defined to be 0: see ``sigmoid``.
FLOAT32_TINY = np.float32(np.finfo(np.float32).tiny)


def sigmoid(z):
    """σ(z) = 1/(1 + e**−z). In numba, float32 results below FLOAT32_TINY are 0: whether a CPU delivers such
    subnormals depends on FTZ/DAZ and on its reciprocal (Intel's VRCPPS flushes them, AMD Zen 4's VRCP14PS does
    not); flushing explicitly makes every CPU agree."""
    return 1.0 / (1.0 + math.exp(-z))


@overload(sigmoid, inline="always")
def _sigmoid_overload(z):
    if z != types.float32:
        return lambda z: 1.0 / (1.0 + math.exp(-z))

    def sigmoid32(z):
        s = np.float32(1.0) / (np.float32(1.0) + fast_exp32(-z))
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
    """D ← scale·(A − Y)∘A∘(1 − A) (eq. 7, scale = 2/B); returns Σ(A − Y)², accumulated in float64."""
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
    """One minibatch step of seed 001's serial backpropagation (the gradient, then one update); returns Σ(a_L − y)²."""
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
    """The gradient over the rows of X into ``gWs``, ``gbs``, example by example (eqs. 4-9); returns Σ(a_L − y)².
    The weights are only read, so threads may run it on their own examples at once (the paper's design)."""
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
            a = a @ W  # numpy's matmul: gemm_into's default backend
            bias_sigmoid(a, b)
        out[r0 : r0 + chunk] = a
    return out


def split_rows(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous near-equal ranges covering ``range(n)`` (fewer if n < parts; none empty)."""
    return [share(n, min(parts, n), k) for k in range(min(parts, n))]


def share(n: int, parts: int, k: int) -> tuple[int, int]:
    """Worker k's contiguous range of ``range(n)`` split ``parts`` ways (empty if n < parts and k is late)."""
    return n * k // parts, n * (k + 1) // parts


class _ParamsTrainer(Trainer):
    """Holds the parameters as C-ordered arrays the kernels update in place."""

    family = "kernels"
    groups = blas = 1  # workers and BLAS threads per worker (predict uses them all)

    def _setup(self, params):
        self.W = [np.ascontiguousarray(W) for W, _ in params]
        self.b = [np.ascontiguousarray(b) for _, b in params]

    def _get_params(self):
        return [(W.copy(), b.copy()) for W, b in zip(self.W, self.b)]

    def _set_params(self, params):
        for W, b, (W_new, b_new) in zip(self.W, self.b, params):
            W[...] = W_new
            b[...] = b_new

    def _predict(self, X):
        with blas_threads(self.blas * self.groups):
            return forward_matrix(self.W, self.b, X)


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
        t, B = self.dtype.type, X.shape[0]
        return example_by_example_step(tuple(self.W), tuple(self.b), self._gW, self._gb, self._acts, self._deltas,
                                       X, Y, t(lr), t(2.0 / B)) / B


class MatrixTrainer(_ParamsTrainer):
    """The minibatch matrix form, its examples split across ``groups`` workers with ``blas`` BLAS threads each.

    Each worker runs forward and backward on its rows, a GEMM and a fused kernel per layer; then the update
    W_l ← W_l − lr·A_{l-1}ᵀΔ_l over all the examples is shared among the workers as ``update`` says:
      "rows"      worker k updates its rows of every W from the whole minibatch, one GEMM with beta = 1 per layer.
      "partials"  the paper's pthreads: worker k writes G_k = A_kᵀΔ_k, then one pass, its rows split across
                  the workers, reduces and updates, W ← W − lr·Σ_k G_k (p + 1 weight-sized reads a step).
    Without options it is the matrix form on one core: one worker, single-threaded BLAS.
    """

    name = "serial-blas"
    matrix = True

    def _workers(self) -> tuple[int, int]:
        """(groups of examples, BLAS threads per group), from the options: a worker per thread, if any."""
        return (self._count("threads"), 1) if "threads" in self.options else (1, 1)

    def _count(self, option) -> int:
        """The option, which must be a positive integer."""
        return check_positive_int(f"trainer {self.name!r}: {option}", self.opts[option])

    def _setup(self, params):
        self.groups, self.blas = self._workers()
        self.update = check_choice(f"trainer {self.name!r}: update", self.opts.get("update", "rows"), UPDATES)
        super()._setup(params)
        self._capacity, self._partials, self._pool, self._closed = 0, None, None, False
        if self.groups > 1:
            # the calling thread works as group 0, so the pool needs groups − 1 threads
            self._pool = ThreadPoolExecutor(self.groups - 1, thread_name_prefix=f"parbp-{self.name}")
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=False)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._finalizer.detach()
            self._pool = None
        self._closed = True

    # -- buffers, allocated once for the largest minibatch seen ---------------------------------
    def _buffers(self, B):
        if B > self._capacity:
            self._acts, self._deltas = ([np.empty((B, n), dtype=self.dtype) for n in self.sizes[1:]] for _ in range(2))
            self._capacity = B
        return [a[:B] for a in self._acts], [d[:B] for d in self._deltas]

    # -- the work of one group of rows ------------------------------------------------------------
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
        futures = [self._pool.submit(task, k) for k in range(1, n)]
        try:
            first = task(0)
        except BaseException:
            wait(futures)  # never leave workers writing into buffers the caller may reuse
            raise
        return [first, *(f.result() for f in futures)]

    def _prepare(self, X, gemm_rows=None):
        """(B, each worker's rows, activation buffers, delta buffers) for X; picks the BLAS for ``gemm_rows``."""
        if self._closed:
            raise RuntimeError(f"trainer {self.name!r} was closed; make a new one")
        B = X.shape[0]
        rows = split_rows(B, self.groups)
        self.gemm_backend, self.gemm_reason = decide(gemm_rows or rows[0][1] - rows[0][0], self.blas)
        return B, rows, *self._buffers(B)

    def _backprop(self, X, Y, lr, targets) -> float:
        """Forward and backward on every worker's rows, then ``W ← W − lr·AᵀΔ`` into ``targets``; returns the loss."""
        B, rows, acts, deltas = self._prepare(X)
        parts, inputs = len(rows), [X, *acts[:-1]]
        scale, lr = self.dtype.type(2.0 / B), self.dtype.type(lr)
        partials = self.update == "partials" and parts > 1  # one worker's partial would be the gradient itself
        if partials and (self._partials is None or len(self._partials[0]) < parts):
            self._partials = [np.empty((parts, *W.shape), dtype=self.dtype) for W in self.W]
            self._partial_b = [np.empty((parts, *b.shape), dtype=self.dtype) for b in self.b]

        def forward_backward(k):
            r0, r1 = rows[k]
            sse = self._forward_backward(X, Y, r0, r1, acts, deltas, scale)
            for l in range(len(self.W)) if partials else ():  # the paper: each worker's partial gradient
                gemm_into(inputs[l][r0:r1], deltas[l][r0:r1], self._partials[l][k], trans_a=True,
                          backend=self.gemm_backend)
                column_sums(deltas[l][r0:r1], self._partial_b[l][k])
            return sse

        def update_rows(k):  # worker k: its rows of every W, its entries of every b
            for A, D, (W, b) in zip(inputs, deltas, targets):
                w_rows, b_cols = slice(*share(W.shape[0], parts, k)), slice(*share(b.shape[0], parts, k))
                gemm_update(A[:, w_rows], D, W[w_rows], lr, backend=self.gemm_backend)
                bias_update(b[b_cols], D[:, b_cols], lr)

        def reduce_partials(k):  # worker k: Σ of the partial gradients over its rows, and the update
            for (W, _), G in zip(targets, self._partials):
                reduce_update(W, G[:parts], lr, *share(W.shape[0], parts, k))

        with blas_threads(self.blas):
            sse = sum(self._run(forward_backward, parts))
            if partials:
                self._run(reduce_partials, parts)
                for (_, b), gb in zip(targets, self._partial_b):
                    b -= lr * gb[:parts].sum(axis=0)
            else:
                self._run(update_rows, parts)
        return sse / B

    # -- the interface -----------------------------------------------------------------------------
    def _step(self, X, Y, lr):
        return self._backprop(X, Y, lr, list(zip(self.W, self.b)))

    def _gradients(self, X, Y):
        # The gradient is the update with lr = −1 of zeros (beta = 1 adds to exact zeros: the same sums).
        grads = [(np.zeros_like(W), np.zeros_like(b)) for W, b in zip(self.W, self.b)]
        return self._backprop(X, Y, -1.0, grads), grads

    def _apply_gradients(self, grads, lr):
        grads = self._check_layers(grads, "dW", "db", np.ascontiguousarray)
        lr = self.dtype.type(lr)
        parts = self.groups if self._pool is not None else 1

        def update(k):
            for W, (gW, _) in zip(self.W, grads):
                w_rows = slice(*share(W.shape[0], parts, k))
                axpy(W[w_rows], gW[w_rows], lr)

        self._run(update, parts)
        for b, (_, gb) in zip(self.b, grads):
            b -= lr * gb


class ThreadsTrainer(MatrixTrainer):
    """The paper's pthreads design: the minibatch split across ``threads`` workers, each with single-threaded
    BLAS (which releases the GIL); ``update="partials"`` sums their partial gradients as the paper does."""

    name = "threads"
    options = {"threads": CORES, "update": "rows"}


class BlasParallelTrainer(MatrixTrainer):
    """The minibatch matrix form with ``threads`` BLAS threads: each matrix product is parallelized."""

    name = "blas-parallel"
    options = {"threads": CORES}

    def _workers(self):
        return 1, self._count("threads")


class HybridTrainer(MatrixTrainer):
    """``threads`` threads in all: the examples split across ``groups`` workers, each with ``threads // groups``
    BLAS threads. OpenBLAS serializes multi-threaded GEMMs from several threads: groups overlap only outside them."""

    name = "hybrid"
    options = {"threads": CORES, "groups": None, "update": "rows"}

    def _workers(self):
        threads = self._count("threads")
        groups = (2 if threads % 2 == 0 else 1) if self.opts["groups"] is None else self._count("groups")
        if threads % groups:
            raise ValueError(f"trainer {self.name!r}: groups ({groups}) must divide threads ({threads}) "
                             f"so every group gets the same number of BLAS threads")
        return groups, threads // groups


class HogwildTrainer(MatrixTrainer):
    """Lock-free asynchronous SGD (Hogwild!, seed 002): each of ``threads`` workers walks its share of the minibatch
    ``microbatch`` examples at a time, updating the shared weights at once with no lock or barrier (one worker with
    ``microbatch = B`` is synchronous SGD). The loss returned is measured on the weights each microbatch saw."""

    name = "hogwild"
    exact = False
    options = {"threads": CORES, "microbatch": 10}

    def _workers(self):
        self.microbatch = self._count("microbatch")
        return super()._workers()

    def _step(self, X, Y, lr):
        B, rows, acts, deltas = self._prepare(X, gemm_rows=self.microbatch)
        scale, lr, inputs = self.dtype.type(2.0 / B), self.dtype.type(lr), [X, *acts[:-1]]

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

    def _gradients(self, *args):
        raise NotImplementedError("hogwild updates as it goes: it has no gradient of the whole minibatch to return "
                                  "or to apply; use a synchronous trainer")

    _apply_gradients = _gradients
