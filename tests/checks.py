"""Assertions shared by the trainer tests (imported as ``from checks import ...``: tests/ is on sys.path)."""
import numpy as np
import pytest

from parbp import reference


def assert_params_close(got, want, rtol, atol):
    """Two parameter lists [(W, b), ...] agree layer by layer."""
    assert len(got) == len(want)
    for (W, b), (wW, wb) in zip(got, want):
        np.testing.assert_allclose(W, wW, rtol=rtol, atol=atol)
        np.testing.assert_allclose(b, wb, rtol=rtol, atol=atol)


def assert_gradients_then_apply_equals_step(make, X, Y, lr=0.5):
    """``gradients`` matches the float64 reference, and ``gradients`` + ``apply_gradients`` equals ``step``."""
    t, s = make(), make()
    loss, grads = t.gradients(X, Y)
    want_loss, want = reference.loss_and_gradients([(W.astype(np.float64), b) for W, b in t.params], X, Y)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert_params_close(grads, want, rtol=1e-4, atol=1e-6)
    t.apply_gradients(grads, lr)
    s.step(X, Y, lr)
    assert_params_close(t.params, s.params, rtol=1e-6, atol=1e-6)


def assert_steps_match_reference(t, ref, batches, dtype, tol, lr=0.5):
    """Steps on each (X, Y) give the reference's losses, and end on its parameters and predictions."""
    for X, Y in batches:
        assert t.step(X, Y, lr) == pytest.approx(ref.step(X, Y, lr), rel=tol * 10)
    assert all(W.dtype == np.dtype(dtype) for W, _ in t.params)
    assert_params_close(t.params, ref.params, rtol=tol, atol=tol)
    np.testing.assert_allclose(t.predict(X), ref.predict(X), rtol=tol, atol=tol)


def finish_job(proc, limit=30):
    """(exit status, output, seconds) of a started MPI job (its own session) that must end within ``limit``
    seconds; a job still running then is killed, process group and all, and the test fails."""
    import os
    import signal
    import subprocess
    import time

    t0 = time.time()
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the job hung for more than {limit} s after a rank failed")
    return proc.returncode, out + err, time.time() - t0


def finish_after_stopping(proc, ranks, limit=30):
    """Stop (SIGSTOP) the last of ``ranks`` (psutil processes) of a started MPI job, then ``finish_job``; a
    stopped rank does not die, so only the others' bounded waits can end the job. Kills what is left after."""
    ranks[-1].suspend()
    try:
        return finish_job(proc, limit)
    finally:
        for r in ranks:
            if r.is_running():
                r.kill()


def assert_failed_engine_named(eng, model, sig, message, lr):
    """Kill or stop (``sig``) engine rank 1 a second into training ``model`` on ``eng``: EngineFailure naming
    that engine and ``message`` within 30 s, never a hang, and the engines refuse more work. A stopped engine
    is killed afterwards (it would not hear the cluster's stop)."""
    import os
    import signal
    import threading
    import time

    from parbp.ipp import EngineFailure

    threading.Timer(1.0, os.kill, args=(eng.pids[1], sig)).start()
    t0 = time.time()
    try:
        with pytest.raises(EngineFailure, match=f"engine\\(?s?\\)? \\[?{eng.ids[1]}\\]?.*{message}|{message}.*{eng.ids[1]}"):
            model.fit(epochs=100_000, batch_size=40, lr=lr)
        assert time.time() - t0 < 30
        with pytest.raises(EngineFailure, match="unusable after an earlier failure"):
            model.run_steps(0, 40, lr, count=1)
    finally:
        if sig == signal.SIGSTOP:
            os.kill(eng.pids[1], signal.SIGKILL)
