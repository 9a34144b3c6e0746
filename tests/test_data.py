"""The loaders on the real files, and every way the input can be wrong, with the error each gives."""
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from parbp import data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA_ROOT = Path(os.environ.get("PARBP_DATA", SHARED))
has_mnist = (DATA_ROOT / "mnist" / "train-images-idx3-ubyte.gz").exists()
has_kdd = (DATA_ROOT / "kddcup99" / "kddcup.data_10_percent.gz").exists()
has_fashion = data.locate(data.SOURCES["fashion-mnist"]["train-images-idx3-ubyte"]) is not None


@pytest.fixture
def data_env(monkeypatch):
    monkeypatch.setenv("PARBP_DATA", str(DATA_ROOT))


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No dataset anywhere: an empty PARBP_DATA, and the repo/system roots pointed at empty folders."""
    monkeypatch.setenv("PARBP_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(data, "REPO_DATA", tmp_path / "repo")
    monkeypatch.setattr(data, "SYSTEM_DATA", tmp_path / "system")
    return tmp_path


@pytest.mark.skipif(not has_mnist, reason="MNIST files not found; set PARBP_DATA")
def test_mnist_split_and_format(data_env):
    ds = data.load("mnist")
    assert ds.X_train.shape == (50_000, 784) and ds.X_val.shape == (10_000, 784) and ds.X_test.shape == (10_000, 784)
    assert ds.Y_train.shape == (50_000, 10) and ds.X_train.dtype == np.float32 and ds.Y_train.dtype == np.float32
    assert 0.0 <= ds.X_train.min() and ds.X_train.max() == 1.0
    np.testing.assert_array_equal(ds.Y_train.sum(axis=1), 1.0)
    # the official first test labels and the class balance of the validation split (last 10,000 of train)
    assert ds.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(ds.y_val).tolist() == [991, 1064, 990, 1030, 983, 915, 967, 1090, 1009, 961]
    assert (ds.n_in, ds.n_out) == data.dims("mnist") == (784, 10)


@pytest.mark.skipif(not has_fashion, reason="install Debian's dataset-fashion-mnist")
def test_fashion_mnist_same_format():
    ds = data.load("fashion-mnist")
    assert ds.X_train.shape == (50_000, 784) and ds.X_test.shape == (10_000, 784)
    assert ds.classes[9] == "Ankle boot"
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


@pytest.mark.skipif(not has_kdd, reason="KDD Cup 99 10% file not found; set PARBP_DATA")
def test_kddcup99_binary_standardized_stratified(data_env):
    ds = data.load("kddcup99")
    n = len(ds.X_train) + len(ds.X_val) + len(ds.X_test)
    assert n == 494_021 and ds.n_in == 122 == data.dims("kddcup99")[0] and ds.n_out == 1
    attack = [Y.mean() for Y in (ds.Y_train, ds.Y_val, ds.Y_test)]
    assert max(attack) - min(attack) < 1e-3 and 0.80 < attack[0] < 0.81  # stratified: 396,743 attacks
    numeric = data._kdd_numeric_columns("onehot")
    np.testing.assert_allclose(ds.X_train[:, numeric].mean(axis=0), 0, atol=1e-3)
    onehot = np.setdiff1d(np.arange(122), numeric)
    np.testing.assert_array_equal(ds.X_train[:, onehot].sum(axis=1), 3)  # one hot per categorical feature
    assert len(ds.X_train) / len(ds.X_val) == pytest.approx(5, rel=0.01)
    again = data.load("kddcup99")
    np.testing.assert_array_equal(again.X_test, ds.X_test)  # seeded split
    ordinal = data.load("kddcup99", encoding="ordinal")
    assert ordinal.n_in == 41 == data.dims("kddcup99", "ordinal")[0]


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; choose one of \['mnist', 'fashion-mnist', 'kddcup99'\]"):
        data.load("cifar")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.dims("cifar")


def test_bad_kdd_options():
    with pytest.raises(ValueError, match=r"unknown kddcup99 subset 'half'; choose one of \['10percent', 'full'\]"):
        data.load("kddcup99", subset="half")
    with pytest.raises(ValueError, match=r"unknown kddcup99 encoding 'hash'"):
        data.load("kddcup99", encoding="hash")
    with pytest.raises(ValueError, match="takes no options"):
        data.load("mnist", subset="full")


def test_missing_offline_says_how_to_fix(isolated, monkeypatch):
    monkeypatch.setenv("PARBP_OFFLINE", "1")
    with pytest.raises(data.DataNotFoundError, match=r"train-images-idx3-ubyte.gz not found .*downloads are off.*PARBP_DATA"):
        data.load("mnist")


def test_missing_and_download_fails(isolated, monkeypatch):
    monkeypatch.delenv("PARBP_OFFLINE", raising=False)
    src = data.Source("mnist", "t10k-labels-idx1-ubyte.gz", "0" * 64, ("http://127.0.0.1:9/",))
    with pytest.raises(data.DataNotFoundError, match=r"(?s)could not be downloaded:\n  http://127.0.0.1:9/: ConnectionError.*copy the file into"):
        data.fetch(src)


def test_download_is_verified_and_bad_files_removed(isolated, monkeypatch):
    """A real pooch download (from a local HTTP server) whose bytes do not match: rejected and deleted."""
    import functools
    import http.server
    import threading

    served = isolated / "served"
    served.mkdir()
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not mnist"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("PARBP_OFFLINE", raising=False)
        good = data.Source("mnist", "t10k-labels-idx1-ubyte.gz", data.sha256(b"not mnist"),
                           (f"http://127.0.0.1:{server.server_port}/",))
        assert data.fetch(good).read_bytes()[:2] == b"\x1f\x8b"  # downloaded into $PARBP_DATA/mnist
        assert (isolated / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
        (isolated / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
        bad = data.Source("mnist", "t10k-labels-idx1-ubyte.gz", "f" * 64, good.mirrors)
        with pytest.raises(data.DataNotFoundError, match="corrupt or not the expected file"):
            data.fetch(bad)
        assert not (isolated / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    finally:
        server.shutdown()


def test_corrupt_file_is_rejected_by_hash(isolated):
    folder = isolated / "env" / "mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(4) + b"garbage"))
    with pytest.raises(data.DataIntegrityError, match=r"t10k-labels-idx1-ubyte.gz is corrupt or not the expected file"):
        data.read(data.SOURCES["mnist"]["t10k-labels-idx1-ubyte"])


def test_truncated_gzip_is_rejected(isolated):
    folder = isolated / "env" / "mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"x" * 1000)[:20])
    with pytest.raises(data.DataIntegrityError, match="not a readable gzip file"):
        data.read(data.SOURCES["mnist"]["t10k-labels-idx1-ubyte"])


def test_idx_header_must_match_expected_shape():
    header = b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    ok = data.parse_idx(header + bytes(5 * 28 * 28), (5, 28, 28))
    assert ok.shape == (5, 28, 28)
    with pytest.raises(data.DataIntegrityError, match=r"IDX header says shape \(5, 28, 28\), expected \(60000, 28, 28\)"):
        data.parse_idx(header + bytes(5 * 28 * 28), (60_000, 28, 28))
    with pytest.raises(data.DataIntegrityError, match="IDX body has 10 bytes"):
        data.parse_idx(header + bytes(10), (5, 28, 28))
    with pytest.raises(data.DataIntegrityError, match="bad magic number"):
        data.parse_idx(b"PK\x03\x04" + bytes(8), (1,))


def test_kdd_rows_with_wrong_width_or_unknown_category():
    with pytest.raises(data.DataIntegrityError, match="41 features \\+ a label, got 3 columns"):
        data.parse_kdd(b"1,2,3\n")
    row = "0,tcp,gopher2,SF," + ",".join(["0"] * 37) + ",normal.\n"
    with pytest.raises(data.DataIntegrityError, match=r"column 2 has values outside kddcup.names: \['gopher2'\]"):
        data.parse_kdd(row.encode())


def _arrays(n=4, n_in=3, n_out=2, dtype=np.float32):
    return np.zeros((n, n_in), dtype), np.eye(n_out, dtype=dtype)[np.arange(n) % n_out]


def test_dataset_rejects_nan_wrong_shapes_and_dtypes():
    X, Y = _arrays()
    ok = dict(name="toy", X_train=X, Y_train=Y, X_val=X, Y_val=Y, X_test=X, Y_test=Y)
    assert data.Dataset(**ok).n_in == 3
    bad_x = X.copy()
    bad_x[1, 2] = np.nan
    with pytest.raises(data.DataIntegrityError, match="X_val contains NaN"):
        data.Dataset(**{**ok, "X_val": bad_x})
    with pytest.raises(data.DataIntegrityError, match=r"X_test must have shape \(n, 3\), got \(4, 5\)"):
        data.Dataset(**{**ok, "X_test": np.zeros((4, 5), np.float32)})
    with pytest.raises(data.DataIntegrityError, match="X_train has 4 rows but Y_train has 3"):
        data.Dataset(**{**ok, "Y_train": Y[:3]})
    with pytest.raises(data.DataIntegrityError, match="must be float32"):
        data.Dataset(**{**ok, "X_train": X.astype(np.float64)})


def test_stratified_split_keeps_proportions():
    y = np.array([0] * 600 + [1] * 300)
    parts = data.stratified_split(y, (4 / 6, 1 / 6, 1 / 6), seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(900))
    assert [int(y[p].sum()) for p in parts] == [200, 50, 50]


def test_load_first_is_the_one_meaning_of_subset():
    """Every entry point's --subset: the first n training rows; validation and test keep max(n // 5, 100)."""
    ds = data.load_first("toy", 400)
    assert (len(ds.X_train), len(ds.X_val), len(ds.X_test)) == (400, 80, 80)  # the toy set's val is its test
    assert np.array_equal(ds.y_train, ((ds.X_train - 0.5) @ np.random.default_rng(0).normal(size=(16, 4))).argmax(1))
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; choose one of \['mnist', .*'toy'\]"):
        data.load_first("cifar", 10)


@pytest.mark.skipif(not any((r / "mnist" / "train-images-idx3-ubyte.gz").exists() for r in data.search_roots()),
                    reason="MNIST files not found; set PARBP_DATA")
def test_load_first_cuts_a_real_dataset():
    ds = data.load_first("mnist", 1000)
    assert (len(ds.X_train), len(ds.X_val), len(ds.X_test)) == (1000, 200, 200)
    with pytest.raises(ValueError, match="--subset 99999 is larger than mnist's 50000 training examples"):
        data.load_first("mnist", 99_999)
