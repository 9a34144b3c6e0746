"""The reference is the single source of truth for gradients: check it against finite differences and autodiff."""
import numpy as np
import pytest

from parbp import nets, reference

SIZES = [13, 9, 7, 4]


@pytest.fixture
def problem():
    rng = np.random.default_rng(1)
    params = nets.init_params(SIZES, seed=3)
    X = rng.random((6, SIZES[0]))
    Y = np.eye(SIZES[-1])[rng.integers(0, SIZES[-1], 6)]
    return params, X, Y


def numeric_gradient(params, X, Y, l, which, index, eps=1e-6):
    def loss_with(delta):
        p = [(W.copy(), b.copy()) for W, b in params]
        p[l][which][index] += delta
        return reference.mse_loss(reference.forward(p, X)[-1], Y)

    return (loss_with(eps) - loss_with(-eps)) / (2 * eps)


def test_gradients_match_finite_differences(problem):
    params, X, Y = problem
    _, grads = reference.loss_and_gradients(params, X, Y)
    rng = np.random.default_rng(0)
    for l, (W, b) in enumerate(params):
        for _ in range(5):
            i, j = rng.integers(0, W.shape[0]), rng.integers(0, W.shape[1])
            assert grads[l][0][i, j] == pytest.approx(numeric_gradient(params, X, Y, l, 0, (i, j)), rel=1e-5, abs=1e-9)
        k = rng.integers(0, b.shape[0])
        assert grads[l][1][k] == pytest.approx(numeric_gradient(params, X, Y, l, 1, k), rel=1e-5, abs=1e-9)


def test_gradients_match_torch_autograd(problem):
    torch = pytest.importorskip("torch")
    params, X, Y = problem
    loss, grads = reference.loss_and_gradients(params, X, Y)
    tp = [(torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)) for W, b in params]
    a = torch.tensor(X)
    for W, b in tp:
        a = torch.sigmoid(a @ W + b)
    tloss = ((torch.tensor(Y) - a) ** 2).sum() / X.shape[0]
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for (gW, gb), (W, b) in zip(grads, tp):
        np.testing.assert_allclose(gW, W.grad.numpy(), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gb, b.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_sigmoid_is_stable_at_extremes():
    z = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    s = reference.sigmoid(z)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, [0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0], rtol=1e-12)


def test_reference_step_descends(problem):
    params, X, Y = problem
    from parbp import trainers

    t = trainers.get("reference")(net=SIZES, n_in=SIZES[0], n_out=SIZES[-1], seed=3)
    first = t.step(X, Y, 0.5)
    for _ in range(20):
        last = t.step(X, Y, 0.5)
    assert last < first
