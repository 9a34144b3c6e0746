"""parbp.mpi checkpoints on real processes: mpiexec -n 2 killed with SIGKILL after epoch k, rerun with --resume."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from parbp import checkpoint
from parbp.distributed import mpiexec
from parbp.checkpoint import CheckpointError

# big enough that an epoch takes a while (400 allreduce steps), small enough for a test
JOB = ["--dataset", "toy", "--net", "32", "--subset", "4000", "--batch-size", "10", "--impl", "numpy",
       "--lr", "0.5", "--epochs", "8"]


def start(*extra, n=2):
    return subprocess.Popen([mpiexec(), "-n", str(n), sys.executable, "-m", "parbp.mpi", *JOB, *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def epoch_of(path) -> int:
    try:
        return checkpoint.load(path)[1]["epoch"]
    except (FileNotFoundError, CheckpointError):
        return 0


def params(path):
    with np.load(path) as z:
        return {k: z[k].tobytes() for k in z.files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mpi")
    runs = {}
    for mode in ("allreduce", "average"):
        rc, log = finish(start("--mode", mode, "--params-out", tmp / f"{mode}.npz"))
        assert rc == 0, log
        runs[mode] = params(tmp / f"{mode}.npz")
    return runs


@pytest.mark.parametrize("mode,k", [("allreduce", 1), ("allreduce", 5), ("average", 2)])
def test_killed_job_resumes_to_the_same_bits(tmp_path, uninterrupted, mode, k):
    ckpt, out = tmp_path / "job.ckpt", tmp_path / "final.npz"
    proc = start("--mode", mode, "--checkpoint", ckpt)
    deadline = time.monotonic() + 180
    while epoch_of(ckpt) < k:
        assert proc.poll() is None, f"the job ended before epoch {k}: {finish(proc)[1]}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and both ranks, without warning
    proc.communicate()
    assert k <= epoch_of(ckpt) < 8
    rc, log = finish(start("--mode", mode, "--checkpoint", ckpt, "--resume", "--params-out", out, "--out",
                           tmp_path / "rows.csv"))
    assert rc == 0, log
    assert params(out) == uninterrupted[mode]
    import pandas as pd

    rows = pd.read_csv(tmp_path / "rows.csv")
    assert rows[rows["rank"] == 0].epoch.tolist() == list(range(1, 9))  # the rows of before the kill are kept


def test_another_world_size_or_run_is_refused_and_nothing_is_overwritten(tmp_path):
    ckpt = tmp_path / "job.ckpt"
    rc, log = finish(start("--mode", "allreduce", "--checkpoint", ckpt, "--epochs", 1))
    assert rc == 0, log
    before = ckpt.read_bytes()
    rc, log = finish(start("--mode", "allreduce", "--checkpoint", ckpt, "--resume", n=3))
    assert rc == 2 and "processes: checkpoint has 2, this run has 3" in log and "mpiexec -n 2" in log
    assert "Traceback" not in log
    rc, log = finish(start("--mode", "allreduce", "--checkpoint", ckpt, "--resume", "--seed", 1))
    assert rc == 2 and "seed: checkpoint has 0, this run has 1" in log
    rc, log = finish(start("--mode", "average", "--checkpoint", ckpt, "--resume"))
    assert rc == 2 and "mode: checkpoint has 'allreduce', this run has 'average'" in log
    rc, log = finish(start("--mode", "allreduce", "--checkpoint", ckpt))
    assert rc == 2 and "add --resume" in log
    assert ckpt.read_bytes() == before
    ckpt.write_bytes(before[:100])
    rc, log = finish(start("--mode", "allreduce", "--checkpoint", ckpt, "--resume"))
    assert rc == 2 and "truncated or corrupt" in log and log.count("error:") == 1
    assert ckpt.read_bytes() == before[:100]


def test_async_has_no_checkpoint():
    rc, log = finish(start("--mode", "async", "--checkpoint", "x.ckpt", n=3))
    assert rc == 2 and "not async" in log and log.count("error:") == 1 and "Traceback" not in log
