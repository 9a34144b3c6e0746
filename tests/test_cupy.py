"""The "cupy" trainer's step, run on the host: ``NumpyOps`` stands in for ``CupyOps``.

What runs here is CupyTrainer's own code (buffers, the order of the GEMMs, the in-place update with
beta = 1, the loss); only the CUDA kernel strings in CupyOps need a GPU, and test the real thing there.
"""
import importlib.util

import numpy as np
import pytest
from checks import assert_gradients_then_apply_equals_step, assert_params_close, assert_steps_match_reference

from parbp import cupy_gpu, trainers
from parbp.base import TrainerUnavailable

SIZES = dict(net=[53, 29], n_in=37, n_out=5, seed=3)


class HostCupy(cupy_gpu.CupyTrainer):
    name = "cupy-on-numpy"

    @classmethod
    def availability(cls):
        return True, ""

    def _make_ops(self):
        return cupy_gpu.NumpyOps(self.dtype)


def batch(rows=7, seed=20):
    rng = np.random.default_rng(seed)
    return rng.random((rows, 37)), np.eye(5)[rng.integers(0, 5, rows)]


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-12)])
def test_steps_match_the_reference(dtype, tol):
    t, ref = HostCupy(dtype=dtype, **SIZES), trainers.get("reference")(**SIZES)
    # buffers for two batch sizes, reused
    assert_steps_match_reference(t, ref, [batch(7, 20), batch(5, 21), batch(7, 22)], dtype, tol)


def test_gradients_then_apply_equals_a_step():
    X, Y = batch()
    assert_gradients_then_apply_equals_step(lambda: HostCupy(**SIZES), X, Y)


def test_bias_sigmoid_saturates_without_nan():
    z = np.array([[-1e4, 0.0, 1e4]], np.float32)
    cupy_gpu.NumpyOps("float32").bias_sigmoid(np.zeros(3, np.float32), z)
    np.testing.assert_array_equal(z, [[0.0, 0.5, 1.0]])


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="cupy is installed")
def test_unavailable_without_cupy():
    assert "cupy" in trainers.names() and "cupy" not in trainers.available()
    assert trainers.why_unavailable("cupy") == "cupy is not installed (pip install 'parbp[gpu]' brings cupy-cuda12x)"
    with pytest.raises(TrainerUnavailable, match="cupy is not installed"):
        trainers.make("cupy", n_in=37, n_out=5)


@pytest.mark.skipif(bool(trainers.why_unavailable("cupy")), reason=trainers.why_unavailable("cupy") or "available")
def test_on_the_gpu_steps_match_the_reference():
    """The real thing: CupyOps' CUDA kernels and cuBLAS calls, where a GPU and cupy are present."""
    t, ref = trainers.make("cupy", **SIZES), trainers.get("reference")(**SIZES)
    for seed, rows in ((20, 7), (21, 5)):
        X, Y = batch(rows, seed)
        assert t.step(X, Y, 0.5) == pytest.approx(ref.step(X, Y, 0.5), rel=1e-4)
    assert_params_close(t.params, ref.params, rtol=2e-5, atol=2e-5)
