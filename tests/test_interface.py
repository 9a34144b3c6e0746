"""The one trainer contract, checked for every registered trainer (unavailable ones must say why)."""
import numpy as np
import pytest

from parbp import nets, trainers
from parbp.base import TrainerUnavailable

N_IN, HIDDEN, N_OUT, B = 23, [17], 5, 12


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    X = rng.random((B, N_IN)).astype(np.float32)
    Y = np.eye(N_OUT, dtype=np.float32)[rng.integers(0, N_OUT, B)]
    return X, Y


def make(name, **kw):
    return trainers.get(name)(net=HIDDEN, n_in=N_IN, n_out=N_OUT, seed=4, **kw)


def test_registry_lists_the_study():
    assert trainers.names()[:2] == ["reference", "numpy"]
    assert {"serial-example", "threads", "blas-parallel", "hybrid", "hogwild", "torch", "theano", "numba-cuda",
            "cupy"} <= set(trainers.names())
    assert set(trainers.available()) <= set(trainers.names())
    assert {"reference", "numpy"} <= set(trainers.available())


def test_trainer_facts_live_on_the_classes():
    """Device, family, matrix form: what the benchmark and the memory model read, set on each class."""
    facts = {n: (trainers.get(n).device, trainers.get(n).family, trainers.get(n).matrix) for n in trainers.names()}
    assert trainers.gpu() == ["numba-cuda", "cupy"] and facts["cupy"] == ("gpu", "cuda", False)
    assert [n for n, f in facts.items() if f[2]] == ["serial-blas", "threads", "blas-parallel", "hybrid", "hogwild"]
    assert {n for n, f in facts.items() if f[1] == "library"} == {"torch", "pytensor", "theano"}
    assert [n for n in trainers.names() if not trainers.get(n).exact] == ["hogwild"]


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown trainer 'fast'; registered trainers are: reference, numpy, "):
        trainers.get("fast")


@pytest.mark.parametrize("name", trainers.names())
def test_contract(name, batch):
    X, Y = batch
    why = trainers.why_unavailable(name)
    if why:
        with pytest.raises(TrainerUnavailable, match=f"trainer '{name}' is unavailable here: "):
            make(name)
        assert name not in trainers.available()
        return
    with make(name) as t:
        # same seed -> the same initial parameters as every other trainer
        start = nets.init_params([N_IN, *HIDDEN, N_OUT], seed=4)
        assert len(t.params) == len(start)
        for (W, b), (W0, b0) in zip(t.params, start):
            assert isinstance(W, np.ndarray) and W.shape == W0.shape and b.shape == b0.shape
            np.testing.assert_allclose(W, W0, rtol=1e-6)
            np.testing.assert_array_equal(b, 0)
        out = t.predict(X)
        assert out.shape == (B, N_OUT) and np.all((out > 0) & (out < 1))
        losses = [t.step(X, Y, 0.5) for _ in range(30)]
        assert all(isinstance(loss, float) and np.isfinite(loss) for loss in losses)
        assert losses[-1] < losses[0]
        # params round-trip through the setter
        p = t.params
        t.params = start
        np.testing.assert_allclose(t.params[0][0], start[0][0], rtol=1e-6)
        t.params = p


@pytest.mark.parametrize("name", ["reference", "numpy"])
def test_bad_input_is_named(name, batch):
    X, Y = batch
    t = make(name)
    with pytest.raises(ValueError, match=rf"X must have shape \(batch, {N_IN}\), got \(12, 3\)"):
        t.step(X[:, :3], Y, 0.1)
    with pytest.raises(ValueError, match="X has 0 rows"):
        t.step(X[:0], Y[:0], 0.1)
    with pytest.raises(ValueError, match="X and Y disagree on the batch size: 12 rows vs 11"):
        t.step(X, Y[:11], 0.1)
    with pytest.raises(ValueError, match=rf"Y must have shape \(batch, {N_OUT}\)"):
        t.step(X, Y[:, :2], 0.1)
    for lr in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="learning rate must be a positive finite number"):
            t.step(X, Y, lr)
    accepts = ", ".join(sorted(trainers.get(name).options)) or "none"
    with pytest.raises(ValueError, match=rf"got unknown option\(s\) \['threads'\]; it accepts: {accepts}"):
        make(name, threads=2)
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\)"):
        make(name, dtype="float16")
    with pytest.raises(ValueError, match=r"expected 2 layers of \(W, b\), got 1"):
        t.params = t.params[:1]


def test_numpy_matches_reference_after_steps(batch):
    X, Y = batch
    ref, fast = make("reference"), make("numpy", dtype="float64")
    for _ in range(5):
        assert fast.step(X, Y, 0.3) == pytest.approx(ref.step(X, Y, 0.3), rel=1e-12)
    for (W, b), (Wr, br) in zip(fast.params, ref.params):
        np.testing.assert_allclose(W, Wr, rtol=1e-12)
        np.testing.assert_allclose(b, br, rtol=1e-12, atol=1e-15)
    f32 = make("numpy")
    f32.step(X, Y, 0.3)
    assert f32.params[0][0].dtype == np.float32


def test_gradients_then_apply_equals_step(batch):
    X, Y = batch
    a, b = make("numpy"), make("numpy")
    loss, grads = a.gradients(X, Y)
    a.apply_gradients(grads, 0.2)
    assert b.step(X, Y, 0.2) == pytest.approx(loss)
    np.testing.assert_array_equal(a.params[0][0], b.params[0][0])


def test_numpy_cross_entropy_gradient_matches_finite_differences():
    import numpy as np

    t = trainers.make("numpy", net=[5], n_in=4, n_out=3, dtype="float64", seed=1, loss="xent")
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(size=(6, 4)), np.eye(3)[rng.integers(0, 3, 6)]
    loss, grads = t.gradients(X, Y)
    assert np.isclose(loss, -np.mean(np.log((t.predict(X) * Y).sum(axis=1))))
    params = t.params
    W = params[0][0]
    for i, j in [(0, 0), (3, 4)]:
        W[i, j] += 1e-6
        t.params = params
        up, _ = t.gradients(X, Y)
        W[i, j] -= 2e-6
        t.params = params
        down, _ = t.gradients(X, Y)
        W[i, j] += 1e-6
        assert np.isclose((up - down) / 2e-6, grads[0][0][i, j], rtol=1e-4)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        trainers.make("numpy", net=[5], n_in=4, n_out=3, loss="hinge")
