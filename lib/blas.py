"""numpy's BLAS: how many threads it uses, and the two matrix products the CPU trainers need.

    gemm_into(A, B, out)        out ← op(A)·op(B)             numpy's matmul, written in place
    gemm_update(A, D, W, lr)    W ← W − lr·AᵀD                one GEMM with beta = 1: the weight update
    axpy(W, G, lr)              W ← W − lr·G                  an update from a gradient already summed

One BLAS for everything, the one numpy is linked to. Not scipy's, although ``scipy.linalg.blas.sgemm``
has the ``alpha``/``beta`` the update needs: the OpenBLAS bundled with scipy serializes calls made from
several threads at once (measured: two workers on two cores ran at 0.87× one; numpy's ran at 1.80×),
and two OpenBLAS thread pools in one process spin against each other on a small machine. numpy's
matmul has no ``beta``, so ``gemm_update`` calls numpy's own library through ctypes (which releases
the GIL during the call), found with threadpoolctl. Where that library has no CBLAS GEMM under a name
we know, it falls back to a matmul into a temporary and a second pass over W.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import ThreadpoolController


@functools.cache  # built once: building a ThreadpoolController scans every loaded library (~1 ms)
def _all_blas() -> ThreadpoolController:
    return ThreadpoolController().select(user_api="blas")


@functools.cache
def _numpy_blas() -> ThreadpoolController:
    path = _numpy_blas_path()
    return _all_blas().select(filepath=path) if path else _all_blas()


def blas_threads(n: int):
    """Context manager: numpy's BLAS uses ``n`` threads inside it (other libraries keep their own)."""
    return _numpy_blas().limit(limits=n)


def gemm_into(A, B, out, trans_a=False, trans_b=False):
    """out ← op(A)·op(B), nothing copied when the operands are row-major with unit column stride
    (numpy hands transposed views to BLAS as flags), the result written in place."""
    np.matmul(A.T if trans_a else A, B.T if trans_b else B, out=out)


# ---------------------------------------------------------------------------------------------------
# The weight update as one GEMM
# ---------------------------------------------------------------------------------------------------
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type) by BLAS build: numpy's wheels (ILP64 OpenBLAS with scipy_ prefix and 64_ suffix),
# other ILP64 builds, and the plain LP64 CBLAS of conda-forge, MKL or a system OpenBLAS.
_SYMBOLS = {
    np.float32: [("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm", ctypes.c_int32)],
    np.float64: [("scipy_cblas_dgemm64_", ctypes.c_int64), ("cblas_dgemm64_", ctypes.c_int64), ("cblas_dgemm", ctypes.c_int32)],
}
def _numpy_blas_path() -> str | None:
    """The file of the BLAS numpy uses: the one threadpoolctl finds next to numpy (wheels ship it in
    numpy.libs) or, failing that, the only BLAS loaded."""
    libs = [c.filepath for c in _all_blas().lib_controllers]
    numpy_dir = Path(np.__file__).resolve().parent
    for path in libs:
        if any(Path(path).resolve().is_relative_to(d) for d in (numpy_dir, numpy_dir.with_name("numpy.libs"))):
            return path
    return libs[0] if len(libs) == 1 else None


def cblas_gemm(dtype):
    """numpy's CBLAS ``?gemm`` for ``dtype`` as a ctypes function, or None where it cannot be found."""
    return _load_gemm(np.dtype(dtype).type)


@functools.cache
def _load_gemm(dtype):
    path = _numpy_blas_path()
    if path is None or dtype not in _SYMBOLS:
        return None
    lib = ctypes.CDLL(path)
    real = ctypes.c_float if dtype is np.float32 else ctypes.c_double
    for symbol, integer in _SYMBOLS[dtype]:
        fn = getattr(lib, symbol, None)
        if fn is not None:
            p = ctypes.c_void_p
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer,
                           real, p, integer, p, integer, real, p, integer]
            fn.restype = None
            return fn
    return None


def _ld(M) -> int | None:
    """Leading dimension of a row-major view (unit column stride), else None."""
    item = M.itemsize
    if M.strides[1] != item or M.strides[0] % item or M.strides[0] < M.shape[1] * item:
        return None
    return M.strides[0] // item


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def axpy(W, G, lr):
    """W ← W − lr·G in place (releases the GIL, so workers can each take a block of rows)."""
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            W[i, j] -= lr * G[i, j]


def gemm_update(A, D, W, lr):
    """W ← W − lr·AᵀD in one GEMM: alpha = −lr, beta = 1, so the gradient AᵀD is never stored.

    A is (B, m), D is (B, n), W is (m, n), all of one float dtype, each a row-major view with unit
    column stride (a block of columns ``A[:, r0:r1]`` with its rows ``W[r0:r1]`` is fine: that is how
    workers split the update). Without numpy's CBLAS (or for other layouts), AᵀD goes to a temporary
    and a second pass subtracts it.
    """
    (B, m), n = A.shape, D.shape[1]
    if D.shape[0] != B or W.shape != (m, n) or not (A.dtype == D.dtype == W.dtype):
        raise ValueError(f"gemm_update: expected A (B, m), D (B, n), W (m, n) of one dtype, got "
                         f"A{A.shape} {A.dtype}, D{D.shape} {D.dtype}, W{W.shape} {W.dtype}")
    gemm = cblas_gemm(W.dtype)
    lds = [_ld(M) for M in (A, D, W)]
    if gemm is not None and None not in lds and B > 0:
        gemm(_ROW_MAJOR, _TRANS, _NO_TRANS, m, n, B, -lr, A.ctypes.data, lds[0], D.ctypes.data, lds[1],
             1.0, W.ctypes.data, lds[2])
        return
    G = np.empty_like(W)
    gemm_into(A, D, G, trans_a=True)
    axpy(W, G, W.dtype.type(lr))
