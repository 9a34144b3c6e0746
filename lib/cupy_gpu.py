"""The minibatch step on a GPU with cuBLAS and fused elementwise kernels (CuPy): the GPU "blas-parallel".

Per layer and step three GEMMs and fused elementwise passes, every buffer allocated once per batch size:

  forward   Z = A_{l-1} W_l                      cuBLAS gemm into A_l's buffer
            A_l = σ(Z + b_l)                      one fused kernel, in place
  output    Δ_L = 2/B (A_L - Y) ∘ A_L(1 - A_L)    one fused kernel; the loss Σ(A_L - Y)² one reduction
  backward  Δ_{l-1} = Δ_l W_l^T                   cuBLAS gemm (W read transposed in place, no copy)
            Δ_{l-1} ∘= A_{l-1}(1 - A_{l-1})       one fused kernel, in place
  update    W_l = W_l - lr A_{l-1}^T Δ_l          one cuBLAS gemm with beta = 1: the update is the GEMM's
                                                  accumulate, so no gradient buffer is written or read
            b_l -= lr Σ_i Δ_l[i]                  a column sum and a fused axpy

The step is written against a few array operations (``CupyOps``); ``NumpyOps`` does them on the host, so the
tests run this exact step without a GPU (only ``CupyOps``' kernel strings go untested there).
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from .base import Trainer


class NumpyOps:
    """The operations of one step, on the host with numpy (the test stand-in for ``CupyOps``)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def to_device(self, host):
        return np.array(host, dtype=self.dtype, order="C")

    def to_host(self, dev):
        return np.array(dev)

    def copy_into(self, dev, host):
        np.copyto(dev, host)

    def empty(self, shape):
        return np.empty(shape, self.dtype)

    def gemm(self, transa, transb, a, b, out, alpha=1.0, beta=0.0):
        """out = alpha op(a) @ op(b) + beta out, with op(x) = x.T for 'T' (cupy.cublas.gemm's contract)."""
        a = a.T if transa == "T" else a
        b = b.T if transb == "T" else b
        if beta == 0.0:
            np.matmul(a, b, out=out)
            out *= self.dtype.type(alpha)
        else:
            out *= self.dtype.type(beta)
            out += self.dtype.type(alpha) * (a @ b)

    def bias_sigmoid(self, b, z):
        expit(np.add(z, b, out=z), out=z)

    def output_delta(self, a, y, d, scale):
        np.subtract(a, y, out=d)
        loss = np.einsum("ij,ij->", d, d, dtype=np.float64)
        d *= self.dtype.type(scale) * a * (1 - a)
        return loss

    def dsigmoid(self, a, d):
        d *= a * (1 - a)

    def sum_rows(self, d, out):
        np.sum(d, axis=0, out=out)

    def axpy(self, alpha, x, y):
        y += self.dtype.type(alpha) * x


class CupyOps:
    """The same operations on the GPU: cuBLAS GEMMs and kernels that fuse each elementwise stage."""

    def __init__(self, dtype):
        import cupy as cp
        from cupy import cublas

        self.cp, self.dtype = cp, np.dtype(dtype)
        self.gemm, self.to_host = cublas.gemm, cp.asnumpy  # NumpyOps.gemm follows cublas.gemm's signature
        # 'T' is the array's element type; every intermediate stays in it (no float64 detours).
        self.bias_sigmoid = cp.ElementwiseKernel(
            "T b", "T z", "z = (T)1 / ((T)1 + exp(-(z + b)))", "parbp_bias_sigmoid")
        self._output_delta = cp.ElementwiseKernel(
            "T a, T y, T scale", "T d", "d = scale * (a - y) * a * ((T)1 - a)", "parbp_output_delta")
        self._squared_error = cp.ReductionKernel(
            "T p, T t", "float64 s", "((double)p - (double)t) * ((double)p - (double)t)",
            "a + b", "s = a", "0", "parbp_squared_error")  # a, b: the reduction's own operands
        self.dsigmoid = cp.ElementwiseKernel("T a", "T d", "d = d * a * ((T)1 - a)", "parbp_dsigmoid")
        self._axpy = cp.ElementwiseKernel("T x, T alpha", "T y", "y += alpha * x", "parbp_axpy")

    def to_device(self, host):
        return self.cp.array(host, dtype=self.dtype, order="C")

    def copy_into(self, dev, host):
        dev.set(host)  # a host-to-device copy into the existing buffer, no allocation

    def empty(self, shape):
        return self.cp.empty(shape, self.dtype)

    def output_delta(self, a, y, d, scale):
        self._output_delta(a, y, self.dtype.type(scale), d)
        return self._squared_error(a, y)  # a 0-d device array: reading it is the step's one sync

    def sum_rows(self, d, out):
        self.cp.sum(d, axis=0, out=out)

    def axpy(self, alpha, x, y):
        self._axpy(x, self.dtype.type(alpha), y)


class CupyTrainer(Trainer):
    """cuBLAS GEMMs and fused CuPy kernels, float32 by default; see the module docstring."""

    name = "cupy"
    device, family = "gpu", "cuda"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import cupy
        except ImportError:
            return False, "cupy is not installed (pip install 'parbp[gpu]' brings cupy-cuda12x)"
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError without a driver; its type lives in cupy itself
            return False, f"no CUDA GPU (cupy cannot reach a CUDA driver: {e})"
        if n == 0:
            return False, "no CUDA GPU (cupy sees 0 devices)"
        return True, ""

    def _make_ops(self):
        return CupyOps(self.dtype)

    def _setup(self, params):
        self.ops = self._make_ops()
        self._W = [self.ops.to_device(W) for W, _ in params]
        self._b = [self.ops.to_device(b) for _, b in params]

    def _make_buffers(self, B: int) -> dict:
        """X, Y, every A_l and Δ_l and the bias gradients for batch size B, on the device."""
        e = self.ops.empty
        return {
            "A": [e((B, n)) for n in self.sizes],  # A[0] is X
            "Y": e((B, self.n_out)),
            "D": [None] + [e((B, n)) for n in self.sizes[1:]],
            "db": [e((n,)) for n in self.sizes[1:]]}

    def _forward(self, X) -> dict:
        buf = self._batch_buffers(X.shape[0])
        A = buf["A"]
        self.ops.copy_into(A[0], X)
        for l, (W, b) in enumerate(zip(self._W, self._b)):
            self.ops.gemm("N", "N", A[l], W, out=A[l + 1])
            self.ops.bias_sigmoid(b, A[l + 1])
        return buf

    def _backward(self, buf, Y, targets, alpha, beta) -> float:
        """Δ for every layer, then ``W = beta W + alpha A^T Δ`` into ``targets`` (the weights for a step,
        fresh buffers with beta = 0 for ``gradients``). Returns the loss, which waits for the device."""
        A, D, ops = buf["A"], buf["D"], self.ops
        ops.copy_into(buf["Y"], Y)
        loss = ops.output_delta(A[-1], buf["Y"], D[-1], 2.0 / Y.shape[0])
        for l in range(len(self._W) - 1, -1, -1):
            if l > 0:  # Δ for the layer below first: it needs W_l before the update changes it
                ops.gemm("N", "T", D[l + 1], self._W[l], out=D[l])
                ops.dsigmoid(A[l], D[l])
            W, b = targets[l]
            ops.gemm("T", "N", A[l], D[l + 1], out=W, alpha=alpha, beta=beta)
            ops.sum_rows(D[l + 1], out=buf["db"][l])
            if beta == 0.0:
                b[...] = 0
            ops.axpy(alpha, buf["db"][l], b)
        return float(loss) / Y.shape[0]

    def _step(self, X, Y, lr):
        return self._backward(self._forward(X), Y, list(zip(self._W, self._b)), -lr, 1.0)

    def _gradients(self, X, Y):
        grads = [(self.ops.empty(W.shape), self.ops.empty(b.shape)) for W, b in zip(self._W, self._b)]
        loss = self._backward(self._forward(X), Y, grads, 1.0, 0.0)
        return loss, [(self.ops.to_host(gW), self.ops.to_host(gb)) for gW, gb in grads]

    def _apply_gradients(self, grads, lr):
        for W, b, (gW, gb) in zip(self._W, self._b, grads):
            self.ops.axpy(-lr, self.ops.to_device(gW), W)
            self.ops.axpy(-lr, self.ops.to_device(gb), b)

    def _get_params(self):
        return [(self.ops.to_host(W), self.ops.to_host(b)) for W, b in zip(self._W, self._b)]

    def _set_params(self, params):
        for W, b, (hW, hb) in zip(self._W, self._b, params):
            self.ops.copy_into(W, hW)
            self.ops.copy_into(b, hb)

    def _predict(self, X):
        return self.ops.to_host(self._forward(X)["A"][-1])

    def close(self):
        self._W, self._b, self._buffers = [], [], {}
