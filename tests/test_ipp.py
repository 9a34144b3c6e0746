"""parbp.ipp on real MPI engines (ipp.Cluster(engines="mpi")) on this machine, tiny nets on the toy dataset.

One module-scoped 2-engine world serves most tests (starting one takes ~10 s); the 3-stage and fault tests
start their own."""
import signal
import time

import numpy as np
import pytest

from checks import assert_failed_engine_named
from parbp import ipp as pi
from parbp import data, ipp_relay, pipeline, trainers
from parbp.distributed import epoch_order
from parbp.train import HISTORY, lr_at, minibatches

NET = [16, 16]  # two hidden layers: three layers to split over two or three engines


@pytest.fixture(scope="module")
def engines():
    with pi.Engines(n=2) as eng:
        yield eng


@pytest.fixture(scope="module")
def ds():
    return data.load_first("toy", 400)


def serial_trainer(ds, net=NET):
    return trainers.get(trainers.fastest_cpu(threaded=False))(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=0)


def serial_run(ds, epochs, B, lr, decay):
    serial = serial_trainer(ds)
    for epoch in range(epochs):
        for idx in minibatches(epoch_order(len(ds.X_train), epoch, 0), B, drop_last=True):
            serial.step(ds.X_train[idx], ds.Y_train[idx], lr_at(lr, decay, epoch))
    return serial


def assert_same_params(a, b):
    assert len(a) == len(b)
    for (Wa, ba), (Wb, bb) in zip(a, b):
        np.testing.assert_allclose(Wa, Wb, atol=1e-5)
        np.testing.assert_allclose(ba, bb, atol=1e-5)


def test_engines_are_one_mpi_world(engines):
    assert engines.mpi and sorted(engines.rank_of.values()) == [0, 1]
    assert [engines.rank_of[e] for e in engines.ids] == [0, 1] and len(set(engines.pids)) == 2


def assert_data_parallel_epoch_is_serial(dp, ds):
    """One epoch of ``dp`` at batch 40, lr 2: the serial trainer on the union of each step's slices."""
    r = dp.train_epoch(0, 40, 2.0)
    serial, losses = serial_trainer(ds), []
    for local in dp.batches(0, 40):
        rows = np.concatenate([shard[i] for shard, i in zip(dp.shards, local)])  # the union of the slices
        losses.append(serial.step(ds.X_train[rows], ds.Y_train[rows], 2.0))
    assert r["steps"] == len(losses) == 10
    assert r["train_loss"] == pytest.approx(np.mean(losses), abs=1e-5)
    assert_same_params(dp.params, serial.params)


def test_data_parallel_equals_serial_on_the_same_batches(engines, ds):
    dp = pi.DataParallel(engines, ds, net=NET)
    assert_data_parallel_epoch_is_serial(dp, ds)
    # a block of steps continues where the last one stopped
    assert dp.run_steps(1, 40, 2.0, first=0, count=3)["steps"] == 3


@pytest.mark.parametrize("schedule,m", [("plain", 1), ("gpipe", 3), ("1f1b", 3), ("1f1b", 8)])
def test_model_parallel_equals_serial_two_stages(engines, ds, schedule, m):
    mp = pi.ModelParallel(engines, ds, net=NET, schedule=schedule, micro_batches=m)
    assert mp.stages == [[0], [1, 2]]
    hist = mp.fit(epochs=2, batch_size=40, lr=2.0, lr_decay=0.1)
    assert_same_params(mp.params, serial_run(ds, 2, 40, 2.0, 0.1).params)
    assert len(mp.steps) == 20 and all(0.0 <= t["idle_fraction"] < 1.0 for t in mp.steps)
    assert hist.idle_theory.iloc[-1] == pytest.approx(1 / (m + 1))
    assert list(hist.columns[:len(HISTORY)]) == list(HISTORY)  # every training loop's history starts alike
    assert hist.val_loss.iloc[-1] < hist.val_loss.iloc[0] and hist.examples_per_s.iloc[1:].gt(0).all()


def test_activation_memory_gpipe_against_1f1b(engines, ds):
    """GPipe holds all m micro-batches on every stage; 1F1B at most p - s: measured and the formula."""
    kept = {}
    for schedule in ("gpipe", "1f1b"):
        mp = pi.ModelParallel(engines, ds, net=NET, schedule=schedule, micro_batches=4)
        r = mp.run_steps(0, 40, 1.0, count=2)
        formula = mp.activation_memory(40)
        assert r["peak_stash_micro_batches"] == formula.micro_batches_formula.tolist()
        assert r["peak_stash_bytes"] == formula.bytes_formula.tolist()
        kept[schedule] = r["peak_stash_micro_batches"]
    assert kept == {"gpipe": [4, 4], "1f1b": [2, 1]}


def test_three_stages_oversubscribed_equal_serial(ds):
    with pi.Engines(n=3) as eng:
        for schedule, m in (("plain", 1), ("gpipe", 4), ("1f1b", 4)):
            mp = pi.ModelParallel(eng, ds, net=NET, schedule=schedule, micro_batches=m)
            assert mp.stages == [[0], [1], [2]]
            mp.fit(epochs=2, batch_size=40, lr=2.0, lr_decay=0.1)
            assert_same_params(mp.params, serial_run(ds, 2, 40, 2.0, 0.1).params)
        with pytest.raises(ValueError, match="cannot split 2 layers into 3 stages; use 1 to 2"):
            pi.ModelParallel(eng, ds, net=[16], schedule="gpipe", micro_batches=2)


def test_bad_arguments_fail_fast(engines, ds):
    with pytest.raises(ValueError, match=r"unknown schedule 'zigzag'; choose one of \('plain', 'gpipe', '1f1b'\)"):
        pi.ModelParallel(engines, ds, net=NET, schedule="zigzag")
    with pytest.raises(ValueError, match="micro_batches must be an integer >= 1"):
        pi.ModelParallel(engines, ds, net=NET, schedule="gpipe", micro_batches=0)
    with pytest.raises(ValueError, match="schedule 'plain' runs one micro-batch"):
        pi.ModelParallel(engines, ds, net=NET, schedule="plain", micro_batches=4)
    mp = pi.ModelParallel(engines, ds, net=NET, schedule="1f1b", micro_batches=50)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="micro_batches=50 is larger than the minibatch.*choose 1 to 40"):
        mp.fit(epochs=1, batch_size=40, lr=1.0)
    assert time.monotonic() - t0 < 1  # before any engine is asked
    with pytest.raises(ValueError, match="smaller than the 2 engines"):
        pi.DataParallel(engines, ds, net=NET).run_steps(0, 1, 1.0)


def test_relay_contrast_still_equals_serial(engines, ds):
    mp = ipp_relay.RelayModelParallel(engines, ds, net=NET, micro_batches=2)
    mp.fit(epochs=1, batch_size=40, lr=2.0)
    assert_same_params(mp.params, serial_run(ds, 1, 40, 2.0, 0.0).params)
    assert_data_parallel_epoch_is_serial(
        ipp_relay.RelayDataParallel(engines, ds, net=NET, impl=trainers.fastest_cpu(threaded=False)), ds)


@pytest.mark.parametrize("sig,message,visible", [(signal.SIGKILL, "died", True), (signal.SIGSTOP, "stopped answering", True),
                                                 (signal.SIGSTOP, "stopped answering", False)])
def test_failed_engine_raises_within_30_s(ds, sig, message, visible):
    """Kill or stop rank 1 mid-epoch: the notebook gets EngineFailure naming its engine, never a hang.
    ``visible=False`` pretends the engines run on another machine (the client cannot see their processes):
    then the surviving rank's MPI deadline is what reports it."""
    with pi.Engines(n=2, timeout=5) as eng:
        eng.local = [visible] * 2
        assert_failed_engine_named(eng, pi.ModelParallel(eng, ds, net=NET, schedule="1f1b", micro_batches=2), sig,
                                   message, lr=1.0)


@pytest.mark.parametrize("local,message", [(False, r"engine 7 stopped answering .*\(the hub lost its heartbeat"),
                                           (True, r"engine 7 died while")])
def test_hub_heartbeat_loss_named_by_what_the_client_sees(local, message):
    """The hub reports EngineError ('died') for an engine that misses its heartbeats, stopped or dead. For an
    engine on another machine that is all the client knows; for one here whose process runs, the hub's word stands."""
    import os

    class HubError(Exception):
        ename, evalue = "EngineError", "Engine 7 died while running task 'x'"

    class Result:
        parbp_engine = 7

        def exception(self):
            return HubError()

    eng = object.__new__(pi.Engines)
    eng.ids, eng.pids, eng.local, eng.broken, eng.mpi = [6, 7], [os.getpid()] * 2, [local] * 2, None, True
    with pytest.raises(pi.EngineFailure, match=message):
        eng._fail([Result()], [], "training")
    assert eng.broken


def test_work_for_an_engine_the_hub_dropped_is_refused_naming_it():
    """An engine can die between two pieces of work, and the hub drop it before the next is submitted:
    ipyparallel then raises IndexError ("No such engine"); the client says which engine and what it was doing."""
    import os
    from types import SimpleNamespace

    class Hub:
        ids = [6]

        def __getitem__(self, engine):
            if engine not in self.ids:
                raise IndexError(f"No such engine: {engine}")
            return SimpleNamespace(apply_async=lambda fn, *args: SimpleNamespace())

    eng = object.__new__(pi.Engines)
    eng.rc, eng.ids, eng.pids, eng.local, eng.broken = Hub(), [6, 7], [os.getpid()] * 2, [False] * 2, None
    with pytest.raises(pi.EngineFailure, match=r"engine\(s\) \[7\] stopped answering .* while gathering"):
        eng.run([(e, print, ()) for e in eng.ids], "gathering")
    assert eng.broken


# --------------------------------------------------------------------------------------------
# The schedules on paper (no engines)


def test_schedules_task_order():
    assert pipeline.stage_tasks("gpipe", 2, 3, 0) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("B", 1), ("B", 2)]
    assert pipeline.stage_tasks("1f1b", 2, 3, 0) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]
    assert pipeline.stage_tasks("1f1b", 2, 3, 1) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]
    for s in range(3):  # every task exactly once, whatever the schedule
        for sched in ("gpipe", "1f1b"):
            assert sorted(pipeline.stage_tasks(sched, 3, 5, s)) == sorted([(k, j) for k in "FB" for j in range(5)])


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(2, 1), (2, 4), (3, 8), (4, 2)])
def test_simulated_bubble_of_equal_stages_is_the_theory(schedule, p, m):
    got = pipeline.simulate(schedule, m, [1.0] * p, [2.0] * p)
    assert got["idle_fraction"] == pytest.approx(pipeline.bubble_theory(p, m))
    assert got["span_s"] == pytest.approx(3.0 * (m + p - 1))


def test_simulated_unequal_stages_and_messages():
    # the slow stage sets the pace: stage 1 takes twice as long, so stage 0 idles more than the theory says
    unequal = pipeline.simulate("1f1b", 4, [1.0, 2.0], [1.0, 2.0])["idle_fraction"]
    assert unequal > pipeline.bubble_theory(2, 4)
    slow_links = pipeline.simulate("gpipe", 4, [1.0, 1.0], [1.0, 1.0], message_s=0.5)
    assert slow_links["idle_fraction"] > pipeline.bubble_theory(2, 4)


def test_idle_fraction_of_a_known_timeline():
    # two stages, 1 s per task: stage 0 works [0,1], [1,2], [2,3], [3,4]; stage 1 [1,2], [2,3]: 6 s in 2 x 4 s
    assert pipeline.idle_fraction([[(0, 1), (1, 2), (2, 3), (3, 4)], [(1, 2), (2, 3)]]) == pytest.approx(0.25)


def test_split_layers_balances_training_flops():
    assert pipeline.split_layers([784, 1024, 1024, 10], 2) == [[0], [1, 2]]
    assert pipeline.split_layers([784, 1024, 1024, 10], 3) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="cannot split 2 layers into 3 stages"):
        pipeline.split_layers([784, 1024, 10], 3)


def test_activation_formula():
    sizes = [784, 1024, 1024, 10]
    assert pipeline.activation_bytes(sizes, [1, 2], 125) == 125 * 4 * (1024 + 1024 + 10)
    assert [pipeline.activations_kept("1f1b", 4, 8, s) for s in range(4)] == [4, 3, 2, 1]
    assert [pipeline.activations_kept("gpipe", 4, 8, s) for s in range(4)] == [8] * 4


def test_stage_math_equals_the_serial_trainer():
    """Two Stage objects chained by hand, two micro-batches: the serial trainer's step to rounding."""
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (10, 16)).astype(np.float32)
    Y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 10)]
    serial = trainers.get("serial-blas")(net=NET, n_in=16, n_out=4, seed=0)
    params = serial.params
    a, b = pipeline.Stage(params[:1], True, False), pipeline.Stage(params[1:], False, True)
    sse = 0.0
    for rows in np.array_split(np.arange(10), 2):
        acts_a = a.forward(X[rows])
        acts_b = b.forward(acts_a[-1].copy())
        e, delta = b.output_delta(acts_b[-1], Y[rows], 10)
        sse += e
        a.backward(acts_a, a.input_delta(b.backward(acts_b, delta), acts_a[-1]))
    a.update(0.5), b.update(0.5)
    assert sse / 10 == pytest.approx(serial.step(X, Y, 0.5), rel=1e-5)
    assert_same_params(a.params + b.params, serial.params)
