"""parbp.seed004 and parbp.example_threads: the experiments behind seed 004's and seed 000's verdicts, on toy sizes."""
import numpy as np
import pandas as pd
import pytest

from parbp import claims, example_threads, nets, seed004
from parbp.data import Dataset


def toy(n=600, n_in=16, n_out=4, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(n_in, n_out))

    def split(m):
        X = rng.uniform(0, 1, size=(m, n_in)).astype(np.float32)
        return X, np.eye(n_out, dtype=np.float32)[((X - 0.5) @ teacher).argmax(axis=1)]

    (Xt, Yt), (Xv, Yv), (Xs, Ys) = split(n), split(n // 5), split(n // 5)
    return Dataset("toy", Xt, Yt, Xv, Yv, Xs, Ys, tuple(range(n_out)))


def test_the_largest_subset_fits_the_budget_and_one_more_minibatch_does_not():
    ds = toy()
    budget = 5 * seed004.MIB
    n = seed004.largest_subset(ds, budget)
    model = seed004.memory.footprint_bytes("serial-blas", nets.layer_sizes("1h", 16, 4), 100)
    assert model + n * seed004.example_bytes(ds) <= budget or n == len(ds.X_train)
    with pytest.raises(ValueError, match="raise --budget-mib"):
        seed004.largest_subset(ds, model)


def test_subset_against_data_parallel_writes_what_the_claims_read(tmp_path):
    ds = toy(n=3000)
    model = seed004.memory.footprint_bytes("serial-blas", nets.layer_sizes("1h", 16, 4), 100)
    budget = model + 1000 * seed004.example_bytes(ds)  # 1,000 examples fit: 3 workers hold all 3,000
    df = seed004.subset_vs_data_parallel(ds, budget, epochs=2, seeds=[0, 1])
    assert set(df.method) == {"subset SGD", "data parallel"} and df.workers.max() == 3
    assert df.groupby("method").examples.first().to_dict() == {"data parallel": 3000, "subset SGD": 1000}
    df.to_csv(tmp_path / "07_seed004_subset.csv", index=False)
    t = claims.table(tmp_path).set_index("claim")
    for claim in ("SGD on the largest subset that fits in memory trails data parallelism on all the data",
                  "data and model parallelism: epochs for the loss to hit a threshold",
                  "how long the parameters take to converge (wall-clock)"):
        assert t.loc[claim].verdict not in ("not measured yet",), t.loc[claim].why


def test_a_network_too_big_for_one_budget_trains_in_stages_that_fit():
    ds = toy(n=400, n_in=64)
    sizes = nets.layer_sizes([256, 256, 256], 64, 4)
    one = seed004.memory.footprint_bytes("serial-blas", sizes, 50)
    df = seed004.too_big(ds, one - 1, epochs=2, hidden=[256, 256, 256], lr=0.5, batch=50)
    r = df.iloc[-1]
    assert r.one_worker_mib > r.budget_mib >= r.stage_mib_max and r.stages >= 2 and len(df) == 2
    with pytest.raises(ValueError, match="fits"):
        seed004.too_big(ds, one, epochs=1, hidden=[256, 256, 256], batch=50)
    assert {"val_acc", "test_acc"} <= set(df)


def test_too_big_is_judged_at_the_rate_validation_chose(tmp_path):
    row = dict(net="784-1024-1024-1024-10", budget_mib=12.0, one_worker_mib=13.8, stages=3, stage_mib_max=9.7, epoch=2)
    grid = pd.DataFrame([dict(row, lr=0.5, val_acc=0.11, test_acc=0.10), dict(row, lr=2.0, val_acc=0.95, test_acc=0.94),
                         dict(row, lr=8.0, val_acc=0.93, test_acc=0.96), dict(row, lr=2.0, epoch=1, val_acc=0.99, test_acc=0.5)])
    grid.to_csv(tmp_path / "07_seed004_too_big.csv", index=False)
    r = claims.table(tmp_path).set_index("claim").loc["a network too large for one node's memory is trained by model parallelism"]
    assert (r.ours, r.verdict) == (0.94, "reproduced") and "lr 2 chosen on validation" in r.why
    grid.assign(test_acc=grid.test_acc - 0.1).to_csv(tmp_path / "07_seed004_too_big.csv", index=False)
    r = claims.table(tmp_path).set_index("claim").loc["a network too large for one node's memory is trained by model parallelism"]
    assert r.verdict == "differs" and "at every rate tried, its accuracy still rising (0.4000 at epoch 1" in r.why


def test_threaded_per_example_loops_compute_the_serial_step():
    sizes = nets.layer_sizes("1h", 784, 10)
    serial, threaded = example_threads.Loops(sizes, 1), example_threads.Loops(sizes, 2)
    rng = np.random.default_rng(1)
    X = rng.random((33, 784), dtype=np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 33)]
    assert serial.serial(X, Y, 0.1) == pytest.approx(threaded.threaded(X, Y, 0.1), rel=1e-5)
    for a, b in zip(serial.W + serial.b, threaded.W + threaded.b):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_example_threads_measures_interleaved_rounds(tmp_path):
    df = example_threads.measure("1h", batch=8, threads=2, rounds=2, steps=1)
    assert list(df["round"]) == [0, 1] and (df.speedup > 0).all() and {"loadavg", "cpu", "blas"} <= set(df)
    s = example_threads.summary(df)
    assert s["lo"] <= s["speedup"] <= s["hi"] and s["cores_for_target"] == pytest.approx(10 / s["efficiency"])


@pytest.mark.parametrize("main, argv", [(example_threads.main, ["--threads", "0"]),
                                        (seed004.main, ["--budget-mib", "-1"])])
def test_bad_command_lines_get_one_line(capsys, main, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and argv[0] in err and len(err.strip().splitlines()) == 1
