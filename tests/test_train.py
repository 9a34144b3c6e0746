import numpy as np
import pytest

from parbp import data, train, trainers


def toy(n=600, n_in=8, seed=0):
    """A separable 3-class problem: the class is which of three feature groups is brightest."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.random((n, n_in)).astype(np.float32) * 0.3
    X[np.arange(n), y] += 0.7
    Y = np.eye(3, dtype=np.float32)[y]
    cut = (int(n * 0.6), int(n * 0.8))
    return data.Dataset("toy", X[:cut[0]], Y[:cut[0]], X[cut[0]:cut[1]], Y[cut[0]:cut[1]], X[cut[1]:], Y[cut[1]:])


def test_fit_learns_and_reports_history():
    ds = toy()
    t = trainers.get("numpy")(net=[16], n_in=8, n_out=3, seed=0)
    h = train.fit(t, ds, epochs=15, batch_size=20, lr=2.0, lr_decay=0.01, seed=1, progress=False)
    assert list(h.columns) == [*train.HISTORY, "train_acc", "test_acc", "lr"]
    assert h.epoch.tolist() == list(range(16))
    assert h.test_acc.iloc[-1] > 0.95 > h.test_acc.iloc[0]
    assert h.val_loss.iloc[-1] < h.val_loss.iloc[0]
    assert h.lr.iloc[2] == pytest.approx(2.0 * 0.99) and (h.seconds.iloc[1:] > 0).all()


def test_fit_is_reproducible_with_a_seed():
    ds = toy()
    runs = []
    for _ in range(2):
        t = trainers.get("numpy")(net=[16], n_in=8, n_out=3, seed=0)
        runs.append(train.fit(t, ds, epochs=2, batch_size=32, lr=1.0, seed=5, progress=False))
    np.testing.assert_array_equal(runs[0].train_loss, runs[1].train_loss)


def test_fit_checks_its_arguments():
    ds = toy()
    t = trainers.get("numpy")(net=[4], n_in=8, n_out=3)
    with pytest.raises(ValueError, match="batch_size > 0"):
        train.fit(t, ds, epochs=1, batch_size=0, lr=0.1)
    with pytest.raises(ValueError, match=r"lr_decay must be in \[0, 1\)"):
        train.fit(t, ds, epochs=1, batch_size=10, lr=0.1, lr_decay=1.5)
    wrong = trainers.get("numpy")(net=[4], n_in=9, n_out=3)
    with pytest.raises(ValueError, match="trainer is 9->3 but dataset toy is 8->3"):
        train.fit(wrong, ds, epochs=1, batch_size=10, lr=0.1)


def test_binary_accuracy_uses_one_output():
    class Half:
        def predict(self, X):
            return X[:, :1]

    X = np.array([[0.2], [0.7], [0.9]], np.float32)
    assert train.accuracy(Half(), X, np.array([0, 1, 0])) == pytest.approx(2 / 3)


def test_minibatches_cover_the_epoch_once():
    batches = train.minibatches(np.random.default_rng(0).permutation(103), 10)
    assert len(batches) == 11 and len(batches[-1]) == 3
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    full = train.minibatches(np.arange(103), 10, drop_last=True)  # data parallelism: every step the same size
    assert len(full) == 10 and {len(b) for b in full} == {10}
