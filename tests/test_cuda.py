"""The five numba.cuda kernels and the "numba-cuda" trainer, on numba's CUDA simulator when there is no GPU.

The simulator runs every CUDA thread as a Python thread, so sizes are tiny and deliberately odd
(37 inputs, 53 and 29 hidden units, 5 outputs, 7 examples): no dimension is a multiple of any tile,
which exercises every bounds check. Tiles of 8 (64 threads a block) keep the simulator's threads few.
"""
import numpy as np
import pytest
from checks import assert_gradients_then_apply_equals_step, assert_params_close, assert_steps_match_reference
from numba import cuda

from parbp import cuda as pc
from parbp import reference, trainers
from parbp.base import TrainerUnavailable

ON_GPU = not pc.simulator_enabled() and cuda.is_available()
SIM = {} if ON_GPU else {"simulator": True}
LAYOUTS = [(8, 1), (8, 2), (8, 4), (16, 1)]
B, N_IN, N_H, N_OUT = 7, 37, 53, 5


def rand(*shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("tile,reg_block", LAYOUTS)
def test_forward_layer_is_sigmoid_of_affine(tile, reg_block):
    A, W, b = rand(B, N_IN, seed=1), rand(N_IN, N_H, seed=2, scale=0.3), rand(N_H, seed=3)
    out = cuda.device_array((B, N_H), np.float32)
    pc.forward_layer(cuda.to_device(A), cuda.to_device(W), cuda.to_device(b), out, tile, reg_block)
    np.testing.assert_allclose(out.copy_to_host(), sigmoid(A.astype(np.float64) @ W + b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tile,reg_block", LAYOUTS)
def test_backward_delta_is_product_with_transpose(tile, reg_block):
    D, W = rand(B, N_H, seed=4), rand(N_IN, N_H, seed=5)
    out = cuda.device_array((B, N_IN), np.float32)
    pc.backward_delta(cuda.to_device(D), cuda.to_device(W), out, tile, reg_block)
    np.testing.assert_allclose(out.copy_to_host(), D.astype(np.float64) @ W.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile,reg_block,split", [(8, 1, 1), (8, 2, 3), (8, 4, 1), (8, 4, 2)])
def test_update_layer_adds_scaled_outer_products_into_weights_and_bias(tile, reg_block, split):
    A, D = rand(B, N_IN, seed=6), rand(B, N_H, seed=7)
    W, b = rand(N_IN, N_H, seed=8), rand(N_H, seed=9)
    dW, db = cuda.to_device(W), cuda.to_device(b)
    pc.update_layer(dW, db, cuda.to_device(A), cuda.to_device(D), -0.25, tile, reg_block, split=split)
    outer = sum(np.outer(A[i], D[i]) for i in range(B))  # eq. 9, example by example
    np.testing.assert_allclose(dW.copy_to_host(), W - 0.25 * outer, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db.copy_to_host(), b - 0.25 * D.sum(axis=0), rtol=1e-5, atol=1e-5)


def test_output_delta_and_loss_partials():
    A = sigmoid(rand(B, N_OUT, seed=10)).astype(np.float32)
    Y = np.eye(N_OUT, dtype=np.float32)[np.arange(B) % N_OUT]
    D = cuda.device_array((B, N_OUT), np.float32)
    partials = cuda.device_array(pc.reduce_blocks(B, N_OUT), np.float64)
    pc.output_delta(cuda.to_device(A), cuda.to_device(Y), D, partials)
    # The reference's output delta, read off as the weight gradient of a layer whose input is the identity.
    (delta, _), = reference.backward([(np.zeros((B, N_OUT)), np.zeros(N_OUT))], [np.eye(B), A.astype(np.float64)], Y)
    np.testing.assert_allclose(D.copy_to_host(), delta, rtol=1e-5, atol=1e-8)
    assert partials.copy_to_host().sum() / B == pytest.approx(reference.mse_loss(A, Y), rel=1e-6)


def test_output_delta_reduces_over_several_blocks():
    rows = 300  # 1500 outputs: 6 blocks of 256 threads, the last one partly idle
    A, Y = sigmoid(rand(rows, N_OUT, seed=11)).astype(np.float32), rand(rows, N_OUT, seed=12)
    D = cuda.device_array((rows, N_OUT), np.float32)
    partials = cuda.device_array(pc.reduce_blocks(rows, N_OUT), np.float64)
    assert partials.shape == (6,)
    pc.output_delta(cuda.to_device(A), cuda.to_device(Y), D, partials)
    assert partials.copy_to_host().sum() == pytest.approx(float(((A - Y).astype(np.float64) ** 2).sum()), rel=1e-6)


def test_dsigmoid_is_hadamard_with_a_times_one_minus_a():
    D, A = rand(B, N_H, seed=13), sigmoid(rand(B, N_H, seed=14)).astype(np.float32)
    dD = cuda.to_device(D)
    pc.dsigmoid(dD, cuda.to_device(A))
    np.testing.assert_allclose(dD.copy_to_host(), D * A * (1 - A), rtol=1e-6)


def test_kernels_reject_mismatched_shapes():
    out = cuda.device_array((B, N_H), np.float32)
    with pytest.raises(ValueError, match="disagrees"):
        pc.forward_layer(cuda.to_device(rand(B, N_IN)), cuda.to_device(rand(N_IN + 1, N_H)), cuda.to_device(rand(N_H)), out)
    with pytest.raises(ValueError, match="split"):
        pc.update_layer(cuda.to_device(rand(N_IN, N_H)), cuda.to_device(rand(N_H)), cuda.to_device(rand(B, N_IN)),
                        cuda.to_device(rand(B, N_H)), -0.1, split=B + 1)


def make(dtype="float32", **opts):
    return trainers.get("numba-cuda")(net=[N_H, 29], n_in=N_IN, n_out=N_OUT, dtype=dtype, seed=3,
                                      tile=opts.pop("tile", 8), reg_block=opts.pop("reg_block", 4), **SIM, **opts)


def batch(rows=B, seed=20):
    rng = np.random.default_rng(seed)
    return rng.random((rows, N_IN)), np.eye(N_OUT)[rng.integers(0, N_OUT, rows)]


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-12)])
def test_two_steps_match_the_reference(dtype, tol):
    t, ref = make(dtype), trainers.get("reference")(net=[N_H, 29], n_in=N_IN, n_out=N_OUT, seed=3)
    # a second batch size reallocates the buffers; the weights stay put
    assert_steps_match_reference(t, ref, [batch(B, 20), batch(5, 21)], dtype, tol)


def test_gradients_then_apply_equals_a_step():
    X, Y = batch()
    assert_gradients_then_apply_equals_step(make, X, Y)


def test_params_round_trip_through_the_device():
    t = make()
    new = [(W + 1, b - 1) for W, b in t.params]
    t.params = new
    for (W, b), (nW, nb) in zip(t.params, new):
        np.testing.assert_array_equal(W, nW)
        np.testing.assert_array_equal(b, nb)


@pytest.mark.parametrize("opts,match", [
    ({"tile": 12}, r"tile must be one of \(8, 16, 32\)"),
    ({"reg_block": 3}, r"reg_block must be one of \(1, 2, 4, 8\)"),
    ({"tile": 32, "reg_block": 8}, "shared memory"),
    ({"tiles": 8}, "unknown option"),
])
def test_bad_layout_options_are_refused(opts, match):
    with pytest.raises(ValueError, match=match):
        make(**opts)


def test_split_for_fills_a_large_gpu_only_when_the_batch_is_long():
    assert pc.split_for(1024, 1024, 10_000, 16, 4, sms=132) == 4   # 17 × 16 blocks → 4 × 272 ≥ 8 × 132
    assert pc.split_for(1024, 1024, 100, 16, 4, sms=132) == 1      # too short to be worth the atomics
    assert pc.split_for(1024, 10, 10_000, 16, 4, sms=132) == 63    # one column of 17 blocks: split far
    assert pc.split_for(1024, 10, 1_000, 16, 4, sms=132) == 1_000 // 128  # capped: chunks ≥ 8 tiles deep


@pytest.mark.skipif(ON_GPU, reason="a CUDA GPU is present")
def test_unavailable_without_a_gpu_even_on_the_simulator():
    assert "numba-cuda" in trainers.names() and "numba-cuda" not in trainers.available()
    why = trainers.why_unavailable("numba-cuda")
    assert "no CUDA GPU" in why
    with pytest.raises(TrainerUnavailable, match="no CUDA GPU"):
        trainers.make("numba-cuda", n_in=N_IN, n_out=N_OUT)


def test_simulator_option_needs_the_simulator(monkeypatch):
    monkeypatch.setattr(pc, "simulator_enabled", lambda: False)
    with pytest.raises(TrainerUnavailable, match="NUMBA_ENABLE_CUDASIM=1"):
        pc.NumbaCudaTrainer(n_in=N_IN, n_out=N_OUT, simulator=True)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (the simulator would take hours at this size)")
def test_on_the_gpu_a_net2h_step_at_batch_2000_matches_the_reference():
    """Default tile and register blocks, a split update, MNIST widths: what the benchmark runs."""
    rng = np.random.default_rng(0)
    X, Y = rng.random((2000, 784)), np.eye(10)[rng.integers(0, 10, 2000)]
    t, ref = trainers.make("numba-cuda", net="2h", n_in=784, n_out=10), trainers.get("reference")(net="2h", n_in=784, n_out=10)
    assert max(t._batch_buffers(2000)["split"]) > 1
    assert t.step(X, Y, 0.1) == pytest.approx(ref.step(X, Y, 0.1), rel=1e-4)
    assert_params_close(t.params, ref.params, rtol=1e-4, atol=1e-4)
