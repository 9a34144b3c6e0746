"""parbp.blas: the weight update as one GEMM, through numpy's CBLAS and through the fallback."""
import json
import multiprocessing
import time

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
        monkeypatch.setattr(blas, "cblas_gemm", lambda dtype, backend="openblas": None)
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


# ---------------------------------------------------------------------------------------------------
# The backends (numpy's OpenBLAS; MKL where the optional wheel is installed) and the measured choice
# ---------------------------------------------------------------------------------------------------
def backend_or_skip(backend):
    if backend not in blas.available_backends():
        pytest.skip(f"{backend} is not installed here (pip install 'parbp[mkl]')")
    return backend


@pytest.mark.parametrize("backend", blas.BACKENDS)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False)])
def test_gemm_into_each_backend(backend, dtype, tol, trans_a, trans_b):
    backend_or_skip(backend)
    rng = np.random.default_rng(1)
    A = rng.standard_normal((37, 23) if trans_a else (23, 37)).astype(dtype)
    B = rng.standard_normal((29, 37) if trans_b else (37, 29)).astype(dtype)
    out = np.full((23, 29), np.nan, dtype)
    blas.gemm_into(A, B, out, trans_a=trans_a, trans_b=trans_b, backend=backend)
    want = (A.T if trans_a else A).astype(np.float64) @ (B.T if trans_b else B).astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    # a block of columns of a wider array (the threads trainers' row blocks): a leading dimension > n
    wide = np.zeros((23, 40), dtype)
    blas.gemm_into(A, B, wide[:, 5:34], trans_a=trans_a, trans_b=trans_b, backend=backend)
    np.testing.assert_allclose(wide[:, 5:34], want, rtol=tol, atol=tol)
    assert not wide[:, :5].any() and not wide[:, 34:].any()


@pytest.mark.parametrize("backend", blas.BACKENDS)
def test_gemm_update_each_backend(backend):
    backend_or_skip(backend)
    A, D, W = operands(np.float32)
    want = W.astype(np.float64) - 0.3 * A.astype(np.float64).T @ D.astype(np.float64)
    blas.gemm_update(A, D, W, 0.3, backend=backend)
    np.testing.assert_allclose(W, want, rtol=1e-5, atol=1e-5)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown BLAS backend 'atlas': expected one of"):
        blas.cblas_gemm(np.float32, "atlas")


def test_mkl_runs_sequential_and_multithreaded_products_stay_on_openblas(monkeypatch):
    if "mkl" not in blas.available_backends():
        pytest.skip("MKL is not installed here")
    assert blas._mkl().threading_layer == "sequential" and "sequential" in blas.library("mkl")
    monkeypatch.setenv("PARBP_BLAS", "mkl")
    assert blas.decide(100, 1) == ("mkl", "PARBP_BLAS")
    assert blas.decide(100, 2)[0] == "openblas"


@pytest.fixture
def quick_choice(monkeypatch):
    """The choice measured on tiny shapes (a real measurement, in milliseconds), nothing cached between tests."""
    monkeypatch.setattr(blas, "CHOICE_ROWS", (4, 64))
    monkeypatch.setattr(blas, "CHOICE_SIZES", (30, 20, 5))
    monkeypatch.setattr(blas, "CHOICE_ROUNDS", 2)
    monkeypatch.setattr(blas, "CHOICE_SAMPLE_S", 0.001)
    monkeypatch.delenv("PARBP_BLAS", raising=False)
    caches = (blas._decide, blas._choice)  # the originals: a test may monkeypatch them
    for cached in caches:
        cached.cache_clear()
    yield
    for cached in caches:
        cached.cache_clear()


def test_choice_is_measured_cached_and_remade_for_another_machine(quick_choice, tmp_path, monkeypatch):
    path = tmp_path / "choice.json"
    made = blas.choice(path)
    assert made["key"] == blas.machine_key() and made["backends"] == blas.available_backends()
    cases = {(d["threads"], d["rows"]) for d in made["decisions"]}
    assert cases == {(blas.CHOICE_THREADS, r) for r in (4, 64)}
    for d in made["decisions"]:
        assert set(d["ms"]) == set(made["backends"]) and all(v > 0 for v in d["ms"].values())
        # MKL only where faster than OpenBLAS by the margin, in the median and in more than 3/4 of the rounds
        mkl_wins = "mkl" in d["ms"] and d["ms"]["mkl"] < (1 - blas.CHOICE_MARGIN) * d["ms"]["openblas"] \
            and d["rounds_won"]["mkl"] > 0.75 * 2
        assert d["backend"] == ("mkl" if mkl_wins else "openblas")
    assert blas.choice(path) == made  # read back, not measured again
    monkeypatch.setattr(blas, "machine_key", lambda: "another CPU")
    other = blas.choice(path)
    assert other["key"] == "another CPU"
    import json
    assert set(json.loads(path.read_text())) == {made["key"], "another CPU"}  # both kept


def _choose_and_count(path, measured_log):
    """In a child process: the choice, with each measurement logged (a line per process that measured)."""
    def measure():
        with open(measured_log, "a") as f:
            f.write("measured\n")
        time.sleep(0.5)  # long enough for the other processes to arrive while this one measures
        return {"key": blas.machine_key(), "backends": blas.available_backends(), "decisions": []}

    blas.measure_choice = measure
    blas.choice(path)


def test_processes_starting_together_measure_once(tmp_path):
    # MPI ranks (or engines) all import parbp at once: one measures, the others read its decision
    ctx = multiprocessing.get_context("fork")
    path, log = tmp_path / "choice.json", tmp_path / "measured.log"
    procs = [ctx.Process(target=_choose_and_count, args=(path, log)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text().count("measured") == 1
    assert blas.machine_key() in json.loads(path.read_text())


def test_decide_takes_the_nearest_measured_case(quick_choice, monkeypatch):
    if blas.available_backends() == ["openblas"]:
        assert blas.decide(100, 1) == ("openblas", "the only BLAS installed")
        return
    decisions = [{"threads": 1, "rows": 10, "ms": {"openblas": 2.0, "mkl": 1.0}, "backend": "mkl"},
                 {"threads": 1, "rows": 1000, "ms": {"openblas": 1.0, "mkl": 2.0}, "backend": "openblas"}]
    monkeypatch.setattr(blas, "_choice", lambda: {"decisions": decisions})
    assert blas.decide(20, 1)[0] == "mkl" and blas.decide(500, 2)[0] == "openblas"
    assert "1000 rows" in blas.decide(500, 1)[1]


def test_without_mkl_only_openblas(quick_choice, monkeypatch):
    monkeypatch.setattr(blas, "_mkl", lambda: None)
    assert blas.available_backends() == ["openblas"]
    assert blas.decide(100, 1) == ("openblas", "the only BLAS installed")
    monkeypatch.setenv("PARBP_BLAS", "mkl")
    with pytest.raises(RuntimeError, match="not installed here"):
        blas.decide(100)


def test_parbp_blas_forces_a_backend(quick_choice, monkeypatch):
    monkeypatch.setenv("PARBP_BLAS", "openblas")
    assert blas.decide(100, 1) == ("openblas", "PARBP_BLAS")
    monkeypatch.setenv("PARBP_BLAS", "atlas")
    with pytest.raises(ValueError, match="PARBP_BLAS='atlas': expected one of auto, openblas, mkl"):
        blas.decide(100)
