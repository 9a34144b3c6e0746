"""parbp.blas: the weight update as one GEMM, through numpy's CBLAS and through the fallback."""
import numpy as np
import pytest

from parbp import blas


def operands(dtype, B=23, m=37, n=29, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, m)).astype(dtype), rng.standard_normal((B, n)).astype(dtype),
            rng.standard_normal((m, n)).astype(dtype))


def test_numpy_blas_is_found():
    # numpy's wheels ship OpenBLAS with a CBLAS GEMM: the fast path must be the one that runs here
    assert blas.cblas_gemm(np.float32) is not None
    assert blas.cblas_gemm(np.float64) is not None


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("path", ["cblas", "fallback"])
def test_gemm_update(dtype, tol, path, monkeypatch):
    if path == "fallback":
        monkeypatch.setattr(blas, "cblas_gemm", lambda dtype: None)
    A, D, W = operands(dtype)
    want = W.astype(np.float64) - 0.3 * A.astype(np.float64).T @ D.astype(np.float64)
    blas.gemm_update(A, D, W, 0.3)
    np.testing.assert_allclose(W, want, rtol=tol, atol=tol)


def test_gemm_update_on_a_block_of_rows():
    # how workers share the update: columns r0:r1 of A update rows r0:r1 of W, the rest untouched
    A, D, W = operands(np.float32)
    before = W.copy()
    blas.gemm_update(A[:, 10:20], D, W[10:20], 0.5)
    np.testing.assert_allclose(W[10:20], before[10:20] - 0.5 * A[:, 10:20].T @ D, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.delete(W, np.s_[10:20], axis=0), np.delete(before, np.s_[10:20], axis=0))


def test_gemm_update_with_strided_operands_takes_the_fallback():
    A, D, W = operands(np.float32)
    A2 = np.asfortranarray(A)  # no unit column stride: CBLAS row-major cannot take it
    want = W - 0.5 * A.T @ D
    blas.gemm_update(A2, D, W, 0.5)
    np.testing.assert_allclose(W, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (lambda A, D, W: (A, D[:-1], W), "expected A \\(B, m\\), D \\(B, n\\), W \\(m, n\\)"),
    (lambda A, D, W: (A, D, W[:-1]), "W\\(36, 29\\)"),
    (lambda A, D, W: (A, D.astype(np.float64), W), "of one dtype"),
])
def test_gemm_update_rejects_mismatched_operands(change, message):
    A, D, W = change(*operands(np.float32))
    with pytest.raises(ValueError, match=message):
        blas.gemm_update(A, D, W, 0.1)


def test_blas_threads_limits_numpy_blas():
    from threadpoolctl import threadpool_info

    path = blas._numpy_blas_path()
    with blas.blas_threads(1):
        assert [i["num_threads"] for i in threadpool_info() if i["filepath"] == path] == [1]
