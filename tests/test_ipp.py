"""parbp.ipp on a real ipp.Cluster(n=2) on this machine, with tiny nets on the toy dataset."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from parbp import ipp as pi
from parbp import mpi, trainers

NET = [16, 16]  # two hidden layers: three layers to split over two engines


@pytest.fixture(scope="module")
def engines():
    with pi.Engines(n=2) as eng:
        yield eng


@pytest.fixture(scope="module")
def ds():
    return mpi.load_data("toy", 400)


def serial_trainer(ds):
    return trainers.get("numpy")(net=NET, n_in=ds.n_in, n_out=ds.n_out, seed=0)


def assert_same_params(a, b):
    for (Wa, ba), (Wb, bb) in zip(a, b):
        np.testing.assert_allclose(Wa, Wb, atol=1e-5)
        np.testing.assert_allclose(ba, bb, atol=1e-5)


def test_data_parallel_equals_serial_on_the_same_batches(engines, ds):
    dp = pi.DataParallel(engines, ds, net=NET)
    r = dp.train_epoch(0, 40, 2.0)
    serial, losses = serial_trainer(ds), []
    for local in dp.batches(0, 40):
        rows = np.concatenate([shard[i] for shard, i in zip(dp.shards, local)])  # the union of the slices
        losses.append(serial.step(ds.X_train[rows], ds.Y_train[rows], 2.0))
    assert r["steps"] == len(losses) == 10
    assert r["train_loss"] == pytest.approx(np.mean(losses), abs=1e-5)
    assert_same_params(dp.params, serial.params)


@pytest.mark.parametrize("m", [1, 3])
def test_model_parallel_equals_serial(engines, ds, m):
    mp = pi.ModelParallel(engines, ds, net=NET, micro_batches=m)
    assert mp.stages == [[0], [1, 2]]
    hist = mp.fit(epochs=2, batch_size=40, lr=2.0, lr_decay=0.1)
    serial = serial_trainer(ds)
    for epoch in range(2):
        for idx in mpi.minibatches(len(ds.X_train), 40, epoch, 0):
            serial.step(ds.X_train[idx], ds.Y_train[idx], mpi.lr_at(2.0, 0.1, epoch))
    assert_same_params(mp.params, serial.params)
    assert len(mp.bubbles) == 20 and all(0.0 <= b < 1.0 for b in mp.bubbles)
    assert hist.idle_theory.iloc[-1] == pytest.approx(1 / (m + 1))
    assert hist.val_loss.iloc[-1] < hist.val_loss.iloc[0] + 0.05 and hist.examples_per_s.iloc[1:].gt(0).all()


def test_bubble_of_a_known_schedule():
    # two stages, two micro-batches, 1 s per task: stage 0 runs F1 [0,1], F2 [1,2], B1 [2,3], B2 [3,4];
    # stage 1 runs forward+backward of micro-batch 1 in [1,2] and of 2 in [2,3]: 6 s of work in 2 x 4 s
    busy = [[(0, 1), (1, 2), (2, 3), (3, 4)], [(1, 2), (2, 3)]]
    assert pi.bubble(busy) == pytest.approx(0.25)


def test_split_layers():
    assert pi.split_layers([784, 1024, 1024, 10], 2) == [[0], [1, 2]]
    assert pi.split_layers([784, 1024, 1024, 10], 3) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="cannot split 2 layers into 3 stages"):
        pi.split_layers([784, 1024, 10], 3)


def test_bad_arguments(engines, ds):
    with pytest.raises(ValueError, match="micro_batches must be >= 1"):
        pi.ModelParallel(engines, ds, net=NET, micro_batches=0)
    mp = pi.ModelParallel(engines, ds, net=NET, micro_batches=50)
    with pytest.raises(ValueError, match="larger than the minibatch"):
        mp.fit(epochs=1, batch_size=40, lr=1.0)


@pytest.mark.parametrize("sig,message", [(signal.SIGKILL, "died"), (signal.SIGSTOP, "stopped answering")])
def test_failed_engine_raises_within_30_s(ds, sig, message):
    """A killed engine is reported by ipyparallel; a stopped one only by our deadline. Neither may hang."""
    with pi.Engines(n=2, timeout=5) as eng:
        mp = pi.ModelParallel(eng, ds, net=NET, micro_batches=2)
        threading.Timer(1.0, os.kill, args=(eng.pids[1], sig)).start()
        t0 = time.time()
        try:
            with pytest.raises(pi.EngineFailure, match=message):
                mp.fit(epochs=10_000, batch_size=40, lr=1.0)
            assert time.time() - t0 < 30
        finally:
            if sig == signal.SIGSTOP:
                os.kill(eng.pids[1], signal.SIGKILL)  # a stopped engine would not hear the cluster's stop
