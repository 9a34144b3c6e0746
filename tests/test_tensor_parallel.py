"""parbp.tensor_parallel: the split math against the serial trainer (ranks as threads), then real processes
under mpiexec and on parbp.ipp's MPI engines, bad arguments, and a rank that dies or stops mid-step."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from checks import assert_failed_engine_named, assert_params_close, finish_after_stopping, finish_job
from parbp import checkpoint, data, nets, trainers
from parbp.distributed import epoch_order, mpiexec
from parbp.train import lr_at, minibatches
from parbp import tensor_parallel as tp


class ThreadWorld:
    """``ranks`` threads in one process summing buffers like an Allreduce: the math without MPI."""

    def __init__(self, ranks):
        self.ranks, self.barrier, self.bufs = ranks, threading.Barrier(ranks, timeout=30), [None] * ranks

    def allreduce(self, rank):
        def reduce(buf, what):
            self.bufs[rank] = buf
            self.barrier.wait()
            total = sum(b.astype(np.float64) for b in self.bufs)  # the same order on every rank
            self.barrier.wait()
            buf[...] = total
        return reduce

    def run(self, fn):
        out, errors = [None] * self.ranks, []

        def go(r):
            try:
                out[r] = fn(r, self.allreduce(r))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=go, args=(r,)) for r in range(self.ranks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out


def serial(sizes):
    return trainers.get(trainers.fastest_cpu(threaded=False))(net=sizes, n_in=sizes[0], n_out=sizes[-1], seed=0)


def assert_same_params(got, want):
    """Within 1e-5: the goal's tolerance."""
    assert_params_close(got, want, rtol=0, atol=1e-5)


NETS = {"1h": [784, 1024, 10], "2h": [784, 1024, 1024, 10], "odd": [37, 53, 29, 11], "four": [20, 9, 7, 5, 3]}


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("net", list(NETS))
def test_split_math_equals_the_serial_trainer(net, ranks):
    """Five steps of every rank's slices, summed by threads, give the serial trainer's parameters and losses."""
    sizes = NETS[net]
    rng = np.random.default_rng(1)
    batches = [(rng.uniform(0, 1, (40, sizes[0])).astype(np.float32),
                np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], 40)]) for _ in range(5)]
    ref = serial(sizes)
    want = [ref.step(X, Y, 1.0) for X, Y in batches]
    params = nets.init_params(sizes, 0)

    def train(rank, allreduce):
        shard = tp.Shard(params, rank, ranks)
        return [shard.step(X, Y, 1.0, allreduce) for X, Y in batches], shard.parts

    out = ThreadWorld(ranks).run(train)
    for losses, _ in out:
        np.testing.assert_allclose(losses, want, rtol=1e-5)
    assert_same_params(tp.assemble([parts for _, parts in out], sizes), ref.params)


def test_plan_and_bytes():
    assert tp.blocks([784, 1024, 1024, 10]) == [("pair", 0), ("replicated", 2)]
    assert tp.blocks([20, 9, 7, 5, 3]) == [("pair", 0), ("pair", 2)]
    assert [tp.columns(53, 2, r) for r in (0, 1)] == [slice(0, 27), slice(27, 53)]
    net2h = tp.message_bytes([784, 1024, 1024, 10], 1000)
    assert net2h["allreduces"] == 1 and net2h["payload_bytes"] == 1000 * 1024 * 4  # forward only: no gradient for X
    assert net2h["sent_bytes"](2) == net2h["payload_bytes"] and net2h["sent_bytes"](1) == 0
    four = tp.message_bytes([20, 9, 7, 5, 3], 10)  # two forwards (widths 7, 3), one backward (width 7)
    assert four["allreduces"] == 3 and four["payload_bytes"] == 10 * 4 * (7 + 3 + 7)


def test_bad_arguments_fail_fast():
    with pytest.raises(ValueError, match=r"cannot split 2 hidden units over 3 ranks.*use 1 to 2 ranks"):
        tp.check([16, 2, 4], 3)
    with pytest.raises(ValueError, match="no hidden layer to split"):
        tp.check([16, 4], 2)
    with pytest.raises(ValueError, match="ranks must be a positive integer"):
        tp.check([16, 8, 4], 0)
    with pytest.raises(ValueError, match="rank 2 is not one of 0 .. 1"):
        tp.Shard(nets.init_params([16, 8, 4]), 2, 2)
    t0 = time.monotonic()
    proc = subprocess.run([mpiexec(), "-n", "3", sys.executable, "-m", "parbp.tensor_parallel", "--dataset", "toy",
                           "--net", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "error: cannot split 2 hidden units over 3 ranks" in proc.stderr
    assert proc.stderr.count("error:") == 1 and time.monotonic() - t0 < 30
    proc = subprocess.run([mpiexec(), "-n", "1", sys.executable, "-m", "parbp.tensor_parallel", "--batch-size", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "argument --batch-size: expected a positive integer, got 0" in proc.stderr


TOY = dict(dataset="toy", subset=400, batch_size=40)


@pytest.mark.parametrize("ranks,net", [(2, "2h"), (3, [53, 29])])
def test_mpiexec_equals_serial(tmp_path, ranks, net):
    out = tmp_path / "params.npz"
    df = tp.run(ranks, timeout=180, net=net, steps=14, lr=2.0, lr_decay=0.1, params_out=out, **TOY)  # 10 steps an epoch
    ds = data.load_first("toy", TOY["subset"])
    ref = trainers.get(trainers.fastest_cpu(threaded=False))(net=net, n_in=ds.n_in, n_out=ds.n_out, seed=0)
    losses = []
    for epoch, count in ((0, 10), (1, 4)):
        for idx in list(minibatches(epoch_order(len(ds.X_train), epoch, 0), 40, drop_last=True))[:count]:
            losses.append(ref.step(ds.X_train[idx], ds.Y_train[idx], lr_at(2.0, 0.1, epoch)))
    got, _ = checkpoint.load_params(out)  # hash checked
    # 14 steps at lr 2 let float32 rounding of the split sums, which depends on the BLAS kernels in use, grow
    # to about 1e-5 (OPENBLAS_CORETYPE=Haswell on an EPYC); the split math itself holds 1e-5 above
    assert_params_close(got, ref.params, rtol=0, atol=5e-5)
    r0 = df[df["rank"] == 0].sort_values("step")
    np.testing.assert_allclose(r0.loss, losses, rtol=1e-5)
    assert sorted(df["rank"].unique()) == list(range(ranks)) and len(df) == 14 * ranks
    assert (df.comm_s >= 0).all() and (df.compute_s > 0).all() and np.allclose(df.step_s, df.compute_s + df.comm_s)


def test_on_ipp_engines_equals_serial():
    from parbp import ipp as pi

    ds = data.load_first("toy", 400)
    with pi.Engines(n=2) as eng:
        model = tp.TensorParallel(eng, ds, net=[53, 29])
        hist = model.fit(epochs=2, batch_size=40, lr=2.0, lr_decay=0.1)
        ref = trainers.get(trainers.fastest_cpu(threaded=False))(net=[53, 29], n_in=ds.n_in, n_out=ds.n_out, seed=0)
        for epoch in range(2):
            for idx in minibatches(epoch_order(len(ds.X_train), epoch, 0), 40, drop_last=True):
                ref.step(ds.X_train[idx], ds.Y_train[idx], lr_at(2.0, 0.1, epoch))
        assert_same_params(model.params, ref.params)
        assert hist.val_loss.iloc[-1] < hist.val_loss.iloc[0] and len(model.steps) == 20
        with pytest.raises(ValueError, match="cannot split 1 hidden units over 2 ranks"):
            tp.TensorParallel(eng, ds, net=[1])


@pytest.mark.parametrize("sig,message", [(signal.SIGKILL, "died"), (signal.SIGSTOP, "stopped answering")])
def test_failed_engine_is_named_within_30_s(sig, message):
    """Kill or stop rank 1 mid-epoch on the engines: EngineFailure naming its engine, never a hang."""
    from parbp import ipp as pi

    ds = data.load_first("toy", 400)
    with pi.Engines(n=2, timeout=5) as eng:
        assert_failed_engine_named(eng, tp.TensorParallel(eng, ds, net=[64, 64]), sig, message, lr=0.01)


def _start(n, extra=()):
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "parbp.tensor_parallel", "--dataset", "toy",
           "--net", "64,64", "--batch-size", "20", "--steps", "10000000", "--lr", "0.01", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:  # until every rank is up and training
        ranks = [c for c in psutil.Process(proc.pid).children(recursive=True) if "parbp.tensor_parallel" in " ".join(c.cmdline())]
        if len(ranks) == n and all(r.cpu_times().user > 1.0 for r in ranks):
            return proc, sorted(ranks, key=lambda r: r.pid)
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the MPI job did not start within 30 s")


def test_killed_rank_is_named_within_30_s():
    proc, ranks = _start(2)
    victim = ranks[-1].pid
    ranks[-1].kill()
    rc, text, seconds = finish_job(proc)
    assert rc != 0 and seconds < 30
    names = tp.dead_rank(text)
    assert names.startswith(": rank ") and f"(pid {victim}) died" in names


def test_stopped_rank_trips_the_bounded_wait():
    """A stopped rank does not die, so mpiexec sees nothing: the other rank's bounded Allreduce ends the job."""
    proc, ranks = _start(2, ["--timeout", "3"])
    rc, text, seconds = finish_after_stopping(proc, ranks)
    assert rc != 0 and seconds < 30
    assert "Allreduce of a layer pair's" in text and "got no answer for 3 s" in text


def test_benchmark_tiny_run(tmp_path, capsys):
    import pandas as pd

    from parbp import tensor_parallel_bench as bench

    out = tmp_path / "goal.csv"
    assert bench.main(["--dataset", "toy", "--subset", "400", "--net", "16,16", "--batch-size", "40", "--steps", "2",
                       "--rounds", "2", "--micro-batches", "2", "--out", str(out)]) == 0
    df = pd.read_csv(out).set_index("method")
    assert list(df.index) == ["serial", "data parallel", "pipeline 1f1b m=2", "tensor parallel"]
    assert (df.examples_per_s > 0).all() and {"cpu", "blas", "loadavg_before", "loadavg_after"} <= set(df.columns)
    t = df.loc["tensor parallel"]
    assert t.vs_serial_min <= t.vs_serial <= t.vs_serial_max and t.met == (t.vs_serial >= bench.GOAL)
    assert t.sent_mib_per_step * 2**20 == 40 * 16 * 4  # 16-16-16-4: one forward Allreduce of the pair's 40 x 16 outputs
    assert t.step_ms > 0 and t.compute_ms > 0 and t.allreduce_ms >= 0  # medians each: they need not add up
    assert "goal:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--steps 20 is more than the 10 minibatches of 40"):
        bench.main(["--dataset", "toy", "--subset", "400", "--net", "16", "--batch-size", "40", "--steps", "20"])
