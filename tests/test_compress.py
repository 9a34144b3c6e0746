"""Pruning, CSR inference, weight sharing and Huffman coding (parbp.compress)."""
import re

import numpy as np
import pytest

from parbp import compress as C
from parbp import data, trainers


@pytest.fixture(scope="module")
def small():
    return data.load("mnist").take(400, n_val=50, n_test=200)


def random_params(sizes=(784, 64, 10), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(a, b)).astype(np.float32), rng.normal(size=b).astype(np.float32))
            for a, b in zip(sizes[:-1], sizes[1:])]


def test_magnitude_masks_keep_the_largest_weights():
    params = random_params()
    masks = C.magnitude_masks(params, [0.9, 0.5])
    assert [M.sum() for M in masks] == [round(0.1 * 784 * 64), 320]
    for (W, _), M in zip(params, masks):
        assert np.abs(W[M]).min() >= np.abs(W[~M]).max()


@pytest.mark.parametrize("trainer", ["numpy", "serial-blas"])
def test_the_mask_survives_retraining(small, trainer):
    with trainers.make(trainer, net=[64], seed=0) as t:
        masks = C.magnitude_masks(t.params, 0.8)
        before = C.apply_masks(t.params, masks)
        C.train_masked(t, small, masks, epochs=1, batch_size=20, lr=0.5)
        for (W, _), (W0, _), M in zip(t.params, before, masks):
            assert np.all(W[~M] == 0)                        # pruned weights stay exactly zero
            assert np.mean(W[M] != W0[M]) > 0.5  # the others trained (not those fed by blank border pixels)


def test_prune_in_rounds_reaches_each_target(small):
    with trainers.make("serial-blas", net=[64], seed=0) as t:
        masks, rounds = C.prune_in_rounds(t, small, [[0.5, 0.2], [0.8, 0.4]], epochs=1, batch_size=50, lr=0.5)
        assert np.allclose(C.sparsity_of(masks), [0.8, 0.4], atol=1e-3)
        assert list(rounds["round"]) == [1, 2] and rounds.sparsity_0.is_monotonic_increasing
        assert all(np.all(W[~M] == 0) for (W, _), M in zip(t.params, masks))


def test_csr_inference_equals_dense_on_the_pruned_weights():
    params = C.apply_masks(random_params(), C.magnitude_masks(random_params(), [0.9, 0.6]))
    X = np.random.default_rng(1).random((7, 784)).astype(np.float32)
    layers = C.to_csr(params)
    assert layers[0][0].nnz == round(0.1 * 784 * 64)
    np.testing.assert_allclose(C.predict_csr(layers, X), C.predict_dense(params, X), rtol=1e-5, atol=1e-6)


def test_quantized_layer_predicts_like_its_dequantized_dense_copy(small):
    params = random_params()
    masks = C.magnitude_masks(params, 0.7)
    shared = C.share_weights(C.apply_masks(params, masks), masks, [4, 3])
    assert [len(np.unique(L.dense()[L.mask])) <= 2 ** b for L, b in zip(shared, [4, 3])] == [True, True]
    X = small.X_test[:50]
    dense = C.dequantize(shared)
    sparse = C.to_csr(dense)
    np.testing.assert_allclose(C.predict_csr(sparse, X), C.predict_dense(dense, X), rtol=1e-5, atol=1e-6)
    with trainers.make("serial-blas", net=[64], seed=0) as t:
        t.params = dense
        np.testing.assert_allclose(t.predict(X), C.predict_dense(dense, X), rtol=1e-4, atol=1e-5)


def test_kmeans_finds_separated_clusters():
    values = np.concatenate([np.full(5, -1.0), np.full(7, 0.2), np.full(3, 3.0)])
    centroids, labels = C.kmeans_1d(values, 3)
    np.testing.assert_allclose(centroids, [-1.0, 0.2, 3.0])
    np.testing.assert_allclose(centroids[labels], values)


def test_centroid_finetuning_keeps_the_sharing(small):
    with trainers.make("numpy", net=[64], seed=0) as t:
        masks = C.magnitude_masks(t.params, 0.8)
        shared = C.share_weights(C.apply_masks(t.params, masks), masks, 3)
        labels = [L.labels.copy() for L in shared]
        centroids = [L.centroids.copy() for L in shared]
        C.finetune_centroids(shared, t, small, epochs=1, batch_size=50, lr=0.5)
        for L, lab, c in zip(shared, labels, centroids):
            np.testing.assert_array_equal(L.labels, lab)
            assert not np.allclose(L.centroids, c)
        for (W, _), L in zip(t.params, shared):
            np.testing.assert_array_equal(W, L.dense())  # the trainer holds the shared weights


def test_huffman_lengths_are_optimal_and_round_trip():
    symbols = np.repeat([0, 1, 2, 3], [1, 1, 2, 4])
    code = C.HuffmanCode.fit(symbols)
    np.testing.assert_array_equal(code.lengths, [3, 3, 2, 1])
    packed, n_bits = code.encode(symbols)
    assert n_bits == 1 * 3 + 1 * 3 + 2 * 2 + 4 * 1 and len(packed) == 2
    np.testing.assert_array_equal(code.decode(packed, n_bits), symbols)
    rng = np.random.default_rng(0)
    symbols = rng.geometric(0.3, size=5000) - 1
    code = C.HuffmanCode.fit(symbols)
    present = code.lengths > 0
    assert np.isclose(np.sum(2.0 ** -code.lengths[present]), 1.0)  # a complete prefix code (Kraft)
    np.testing.assert_array_equal(code.decode(*code.encode(symbols)), symbols)
    one = C.HuffmanCode.fit([4, 4, 4])  # a single symbol costs one bit each
    assert one.encode([4, 4, 4])[1] == 3 and list(one.decode(*one.encode([4, 4, 4]))) == [4, 4, 4]


@pytest.mark.parametrize("index_bits", [1, 2, 5])
def test_relative_positions_round_trip_with_escapes(index_bits):
    mask = np.random.default_rng(index_bits).random((30, 40)) < 0.05
    stream = C.relative_positions(mask, index_bits)
    assert stream.max() <= 2 ** index_bits - 1
    np.testing.assert_array_equal(C.positions_from_gaps(stream, index_bits), np.flatnonzero(mask))


def test_encoded_layer_decodes_to_the_shared_weights():
    params = random_params()
    masks = C.magnitude_masks(params, 0.9)
    layer = C.share_weights(C.apply_masks(params, masks), masks, 4)[0]
    for index_bits in (2, 4, 8):
        np.testing.assert_array_equal(C.decode_layer(C.encode_layer(layer, index_bits)), layer.dense())
    table = C.compression_table(C.share_weights(C.apply_masks(params, masks), masks, 4))
    assert table.loc["fc1", "weight bits (P+Q)"] == 4
    assert table.loc["fc1", "weight bits (P+Q+H)"] < 4.5  # Huffman never much above the fixed width
    assert table.loc["total", "× smaller (P+Q+H)"] > 10


@pytest.mark.parametrize("call, match", [
    (lambda: C.magnitude_masks(random_params(), 1.0), r"sparsity\[0\] must be a number in \[0, 1\)"),
    (lambda: C.magnitude_masks(random_params(), -0.1), r"must be a number in \[0, 1\)"),
    (lambda: C.magnitude_masks(random_params(), [0.5]), "one value per layer"),
    (lambda: C.share_weights(random_params(), C.magnitude_masks(random_params(), 0.5), 0), "from 1 to 16"),
    (lambda: C.share_weights(random_params(), C.magnitude_masks(random_params(), 0.5), 2.5), "from 1 to 16"),
    (lambda: C.relative_positions(np.ones((2, 2), bool), 0), "index_bits must be an integer"),
    (lambda: C.HuffmanCode.fit([]), "non-empty"),
])
def test_bad_arguments_fail_clearly(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_load_or_train_loads_a_saved_network_or_trains_one(small, tmp_path):
    from parbp.checkpoint import save_params

    saved = random_params()
    path = save_params(tmp_path / "net.npz", saved, {"test_acc": 0.5})
    with trainers.make("serial-blas", net=[64], seed=1) as t:
        assert C.load_or_train(t, path).startswith("loaded from net.npz")
        for (W, b), (W0, b0) in zip(t.params, saved):
            np.testing.assert_array_equal(W, W0)
        with pytest.raises(FileNotFoundError, match="run notebook 08 first"):
            C.load_or_train(t, tmp_path / "absent.npz")
    with trainers.make("serial-blas", net=[32], seed=1) as t:
        with pytest.raises(ValueError, match="weight shapes"):
            C.load_or_train(t, path)
        before = [W.copy() for W, _ in t.params]
        assert "trained here: 400 examples, 1 epochs" in C.load_or_train(t, dataset=small, epochs=1, lr=0.5)
        assert not np.array_equal(before[0], t.params[0][0])


def test_pruning_once_measures_each_cut_and_keeps_the_network(small):
    with trainers.make("serial-blas", net=[64], seed=0) as t:
        C.load_or_train(t, dataset=small, epochs=2, lr=0.5)
        dense = [W.copy() for W, _ in t.params]
        once = C.accuracy_pruned_once(t, [0.0, 0.5, 0.999], small.X_test, small.y_test)
        assert once.weights_removed.tolist() == [0.0, 0.5, 0.999]
        assert once.test_acc.iloc[0] == C.accuracy(t, small.X_test, small.y_test)
        assert once.test_acc.iloc[-1] < once.test_acc.iloc[0]
        for (W, _), W0 in zip(t.params, dense):
            np.testing.assert_array_equal(W, W0)


def shared_layers():
    params = random_params()
    masks = C.magnitude_masks(params, [0.9, 0.6])
    return C.share_weights(C.apply_masks(params, masks), masks, [4, 3])


def test_the_compressed_file_decodes_to_the_shared_network(tmp_path):
    shared = shared_layers()
    path = C.save_compressed(tmp_path / "net.npz", shared, {"source": "a test"})
    params, meta = C.load_compressed(path)
    for (W, b), L in zip(params, shared):
        np.testing.assert_array_equal(W, L.dense())
        np.testing.assert_array_equal(b, L.bias)
    assert meta["source"] == "a test"
    assert meta["stored_bytes"] == pytest.approx(C.compression_table(shared).loc["total", "bytes (P+Q+H)"])
    assert path.stat().st_size < sum(W.nbytes for W, _ in params) / 5


def test_a_changed_compressed_file_is_refused(tmp_path):
    from parbp.checkpoint import CheckpointError, save_params

    path = C.save_compressed(tmp_path / "net.npz", shared_layers())
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["fc1_weights"][0] ^= 1  # one bit of the Huffman stream flipped, the recorded hash kept
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="SHA-256"):
        C.load_compressed(path)
    with pytest.raises(CheckpointError, match="is not a compressed network"):
        C.load_compressed(save_params(tmp_path / "dense.npz", random_params(), {}))


def test_the_command_line_defaults_are_the_paper_profile():
    from parbp.profiles import PROFILES

    paper = PROFILES["paper"]["09_memory_and_compression.ipynb"]
    args = C.parser().parse_args([])
    assert args.schedule == paper["schedule_1h"] and args.bits == paper["bits_1h"]
    for name in ("retrain_examples", "retrain_epochs", "retrain_lr", "test_examples", "finetune_examples"):
        assert getattr(args, name) == paper[name], name


@pytest.mark.parametrize("argv, match", [
    (["--schedule", "0.5,1.2"], r"must be a number in \[0, 1\)"),
    (["--bits", "0"], "expected a positive integer"),
    (["--retrain-lr", "-1"], "expected a positive finite number"),
])
def test_the_command_line_refuses_bad_settings(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        C.parser().parse_args(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and re.search(match, err), err
