"""parbp.mpi on real processes: mpiexec -n 2 (or 3) on this machine, tiny nets on the toy dataset."""
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from checks import finish_after_stopping, finish_job
from parbp import checkpoint, data, mpi, trainers
from parbp.distributed import epoch_order, mpiexec
from parbp.train import HISTORY, evaluate, lr_at, minibatches

TINY = dict(dataset="toy", net="16", subset=400, batch_size=40, impl="numpy")


def test_allreduce_equals_serial_trainer(tmp_path):
    """Two ranks splitting every minibatch reproduce the serial trainer on the same data order."""
    out = tmp_path / "params.npz"
    df = mpi.run("allreduce", 2, timeout=120, epochs=2, lr=2.0, lr_decay=0.1, dtype="float64",
                 params_out=out, **TINY)
    ds = data.load_first("toy", TINY["subset"])
    serial = trainers.get("numpy")(net=[16], n_in=ds.n_in, n_out=ds.n_out, dtype="float64", seed=0)
    losses = []
    for epoch in range(2):
        lr = lr_at(2.0, 0.1, epoch)
        ls = [serial.step(ds.X_train[i], ds.Y_train[i], lr)
              for i in minibatches(epoch_order(len(ds.X_train), epoch, 0), TINY["batch_size"], drop_last=True)]
        losses.append(np.mean(ls))
    got, meta = checkpoint.load_params(out)  # hash checked
    assert meta["mode"] == "allreduce" and meta["processes"] == 2
    for (gW, gb), (W, b) in zip(got, serial.params):
        np.testing.assert_allclose(gW, W, atol=1e-5)
        np.testing.assert_allclose(gb, b, atol=1e-5)
    np.testing.assert_allclose(df[df["rank"] == 0].train_loss, losses, atol=1e-5)
    assert sorted(df["rank"].unique()) == [0, 1]  # every rank reported its CPU and memory
    assert (df.peak_rss_mib > 0).all() and df.cpu_percent.notna().all()


@pytest.mark.parametrize("mode,n", [("average", 2), ("async", 3)])
def test_average_and_async_lower_the_loss(mode, n):
    df = mpi.run(mode, n, timeout=120, epochs=4, lr=2.0, sync_every=2, **TINY)
    r0 = df[df["rank"] == 0]
    assert len(r0) == 4 and set(df["rank"]) == set(range(n))
    assert set(HISTORY) <= set(df.columns) and r0.epoch.tolist() == [1, 2, 3, 4]  # the history every loop shares
    ds = data.load_first("toy", TINY["subset"])
    untrained = trainers.get("numpy")(net=[16], n_in=ds.n_in, n_out=ds.n_out, seed=0)
    start, _ = evaluate(untrained, ds.X_val, ds.Y_val, ds.y_val)
    assert r0.val_loss.iloc[-1] < 0.7 * start
    assert r0.train_loss.iloc[-1] < r0.train_loss.iloc[0]


def test_async_reports_staleness():
    # 2 workers, 400 examples -> 200 each -> 5 minibatches of 40, a push every 2 steps and at the
    # end of the epoch: 3 pushes per worker and epoch
    df = mpi.run("async", 3, timeout=120, epochs=3, lr=2.0, sync_every=2, **TINY)
    r0 = df[df["rank"] == 0]
    assert (r0.updates == 6).all()
    assert r0.version.iloc[-1] == 18
    assert (r0.staleness_mean >= 0).all() and (r0.staleness_max >= 0).all()
    # with two workers pushing in turn, some update must have been computed on parameters
    # that the other worker changed in the meantime
    assert r0.staleness_max.max() >= 1


def _start(mode, n, extra=()):
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "parbp.mpi", "--mode", mode, "--dataset", "toy",
           "--net", "16", "--impl", "numpy", "--epochs", "100000", "--batch-size", "20", "--lr", "1", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:  # wait until every rank is up and training
        ranks = [c for c in psutil.Process(proc.pid).children(recursive=True) if "parbp.mpi" in " ".join(c.cmdline())]
        if len(ranks) == n and all(r.cpu_times().user > 0.5 for r in ranks):
            return proc, ranks
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the MPI job did not start within 30 s")


@pytest.mark.parametrize("mode,n", [("allreduce", 2), ("async", 3)])
def test_killed_rank_ends_the_job_with_a_message(mode, n):
    proc, ranks = _start(mode, n)
    ranks[-1].kill()
    rc, text, seconds = finish_job(proc)
    assert rc != 0 and seconds < 30
    assert "BAD TERMINATION" in text or "died" in text


@pytest.mark.parametrize("mode,n", [("average", 2), ("async", 3)])
def test_hung_rank_trips_the_watchdog(mode, n):
    """A stopped rank does not die, so mpiexec sees nothing: the other ranks' watchdog must end the job."""
    proc, ranks = _start(mode, n, ["--timeout", "3"])
    rc, text, seconds = finish_after_stopping(proc, ranks)
    assert rc != 0 and seconds < 30
    assert "got no answer" in text or "sent nothing" in text


def test_bad_arguments_fail_fast():
    with pytest.raises(RuntimeError, match="-n must be <= the batch size"):
        mpi.run("allreduce", 3, timeout=30, epochs=1, **{**TINY, "batch_size": 2})
    with pytest.raises(ValueError, match="unknown mode"):
        mpi.run("hogwild", 2)
    with pytest.raises(ValueError, match="processes must be a positive integer"):
        mpi.run("allreduce", "[1, 2]")  # e.g. a papermill parameter passed as a string
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "parbp.mpi", "--mode", "gossip"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "invalid choice: 'gossip'" in proc.stderr
    proc = subprocess.run([mpiexec(), "-n", "1", sys.executable, "-m", "parbp.mpi", "--mode", "async",
                           "--dataset", "toy"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "at least 2 processes" in proc.stderr


def test_benchmark_runs_both_engines():
    """The benchmark's two halves on a tiny job: parbp under mpiexec, torch DDP over gloo on loopback."""
    from parbp import mpi_bench

    pytest.importorskip("torch")  # the "baselines" extra
    ours = mpi_bench.run_parbp(net="1h", batch_size=20, processes=2, steps=2, warmup=1, impl="numpy", timeout=120)
    assert ours["step_s"] > 0 and ours["compute_s"] > 0 and ours["other_s"] >= 0
    ddp = mpi_bench.run_ddp(net="1h", batch_size=20, processes=2, steps=2, warmup=1, timeout=120)
    assert ddp["step_s"] > 0


def test_the_server_takes_a_push_by_its_rule():
    pushed = np.array([2.0, -4.0])
    for rule, staleness, expected in [("delta", 3, [3.0, -3.0]), ("staleness", 2, [2.0, -1.0]),
                                      ("staleness", 0, [3.0, -3.0]), ("replace", 5, [2.0, -4.0])]:
        v = np.array([1.0, 1.0])
        mpi.take_push(v, pushed, staleness, rule)
        np.testing.assert_allclose(v, expected, err_msg=f"{rule}, staleness {staleness}")
    with pytest.raises(ValueError, match="choose one of"):
        mpi.take_push(np.zeros(2), pushed, 1, "average")


def test_one_async_worker_is_the_same_run_under_every_rule():
    """With one worker nothing is ever stale, so adding its change, dividing it by max(1, 0) and taking its
    parameters all give the same model: the rules differ only in how they treat other workers' updates."""
    finals = [mpi.run("async", 2, timeout=120, epochs=2, lr=2.0, async_rule=rule, **TINY).query("rank == 0")
              for rule in mpi.ASYNC_RULES]
    for df in finals:
        assert (df.staleness_max == 0).all()
        np.testing.assert_allclose(df.val_loss, finals[0].val_loss, rtol=1e-5)
    assert (finals[-1].async_rule == "replace").all()


def test_whole_data_gives_every_rank_all_the_steps():
    # 400 examples, batch 40: 10 steps an epoch over everything, 5 over one of two shards (sync every step)
    runs = {whole: mpi.run("average", 2, timeout=120, epochs=1, lr=2.0, whole_data=whole, **TINY).query("rank == 0")
            for whole in (True, False)}
    assert runs[True].syncs.iloc[-1] == 10 and runs[False].syncs.iloc[-1] == 5
    with pytest.raises(RuntimeError, match="--whole-data applies to --mode average only"):
        mpi.run("allreduce", 2, timeout=60, epochs=1, whole_data=True, **TINY)
