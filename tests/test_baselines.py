"""The library baselines (torch, pytensor, theano) compute the reference's step, on a tiny net."""
import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from parbp import theano_worker, trainers
from parbp.base import TrainerUnavailable
from parbp.nets import init_params, layer_sizes
from parbp.reference import ReferenceTrainer, loss_and_gradients

BASELINES = ("torch", "pytensor", "theano")
NET, N_IN, N_OUT, SEED = [37], 53, 10, 7  # odd sizes catch transposes and broadcasting slips


def batch(n=24, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_IN))
    Y = np.eye(N_OUT)[rng.integers(0, N_OUT, n)]
    return X, Y


def theano_ready() -> bool:
    ok, why = trainers.get("theano").availability()
    if not ok:
        # Absent is fine, but it must say how to fix it.
        assert "make theano-env" in why, why
    return ok


@pytest.fixture(scope="module", params=BASELINES)
def baseline(request):
    """One float64 trainer per baseline, shared by the tests of this module (Theano's start is slow)."""
    name = request.param
    if name == "theano" and not theano_ready():
        pytest.skip("the Theano env is absent (its unavailability is checked in test_theano_absent_says_how)")
    with trainers.make(name, net=NET, n_in=N_IN, n_out=N_OUT, dtype="float64", seed=SEED) as t:
        yield t


def fresh_params():
    return init_params(layer_sizes(NET, N_IN, N_OUT), SEED)


def assert_params_close(got, want, rtol, atol):
    assert len(got) == len(want)
    for l, ((W, b), (W0, b0)) in enumerate(zip(got, want)):
        np.testing.assert_allclose(W, W0, rtol=rtol, atol=atol, err_msg=f"W of layer {l}")
        np.testing.assert_allclose(b, b0, rtol=rtol, atol=atol, err_msg=f"b of layer {l}")


def test_starts_from_the_shared_init(baseline):
    baseline.params = fresh_params()
    assert_params_close(baseline.params, fresh_params(), 0, 0)


def test_one_step_equals_reference(baseline):
    X, Y = batch()
    baseline.params = fresh_params()
    ref = ReferenceTrainer(net=NET, n_in=N_IN, n_out=N_OUT, seed=SEED)
    for lr in (0.5, 0.1):  # two steps: the second runs on updated weights and a new lr
        assert baseline.step(X, Y, lr) == pytest.approx(ref.step(X, Y, lr), rel=1e-12)
    assert_params_close(baseline.params, ref.params, rtol=1e-10, atol=1e-12)
    # and the step really moved the weights (the comparison above is not between two unchanged copies)
    assert not np.allclose(baseline.params[0][0], fresh_params()[0][0])


def test_gradients_equal_reference(baseline):
    X, Y = batch(seed=1)
    baseline.params = fresh_params()
    loss, grads = baseline.gradients(X, Y)
    ref_loss, ref_grads = loss_and_gradients(fresh_params(), X, Y)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert_params_close(grads, ref_grads, rtol=1e-9, atol=1e-13)
    # apply_gradients is the second half of a step
    baseline.apply_gradients(grads, 0.3)
    want = [(W - 0.3 * gW, b - 0.3 * gb) for (W, b), (gW, gb) in zip(fresh_params(), ref_grads)]
    assert_params_close(baseline.params, want, rtol=1e-12, atol=1e-14)


def test_predict_equals_reference(baseline):
    X, _ = batch(n=5, seed=2)
    baseline.params = fresh_params()
    ref = ReferenceTrainer(net=NET, n_in=N_IN, n_out=N_OUT, seed=SEED)
    out = baseline.predict(X)
    assert out.shape == (5, N_OUT)
    np.testing.assert_allclose(out, ref.predict(X), rtol=1e-12)


def test_params_round_trip(baseline):
    rng = np.random.default_rng(3)
    new = [(rng.normal(size=W.shape), rng.normal(size=b.shape)) for W, b in fresh_params()]
    baseline.params = new
    assert_params_close(baseline.params, new, 0, 0)
    # the copies handed out are the caller's: writing to them does not touch the trainer
    got = baseline.params
    got[0][0][...] = 0
    assert_params_close(baseline.params, new, 0, 0)


@pytest.mark.parametrize("name", BASELINES)
def test_float32_step_close_to_reference(name):
    if name == "theano" and not theano_ready():
        pytest.skip("the Theano env is absent")
    X, Y = batch(seed=4)
    ref = ReferenceTrainer(net=NET, n_in=N_IN, n_out=N_OUT, seed=SEED)
    with trainers.make(name, net=NET, n_in=N_IN, n_out=N_OUT, seed=SEED) as t:
        assert t.dtype == np.float32
        loss = t.step(X, Y, 0.5)
        assert loss == pytest.approx(ref.step(X, Y, 0.5), rel=1e-5)
        for W, b in t.params:
            assert W.dtype == b.dtype == np.float32
        assert_params_close(t.params, ref.params, rtol=1e-4, atol=1e-5)
        assert t.predict(X).dtype == np.float32


# -- options and availability -------------------------------------------------------------------------
def test_torch_rejects_bad_options():
    T = trainers.get("torch")
    with pytest.raises(ValueError, match="device must be one of"):
        T(net=NET, n_in=N_IN, n_out=N_OUT, device="tpu")
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        T(net=NET, n_in=N_IN, n_out=N_OUT, threads=0)
    with pytest.raises(ValueError, match="unknown option"):
        T(net=NET, n_in=N_IN, n_out=N_OUT, cores=2)


def test_torch_cuda_without_gpu_is_unavailable():
    import torch

    if torch.cuda.is_available():
        with trainers.make("torch", net=NET, n_in=N_IN, n_out=N_OUT, device="cuda", dtype="float64", seed=SEED) as t:
            X, Y = batch()
            ref = ReferenceTrainer(net=NET, n_in=N_IN, n_out=N_OUT, seed=SEED)
            assert t.step(X, Y, 0.5) == pytest.approx(ref.step(X, Y, 0.5), rel=1e-9)
    else:
        with pytest.raises(TrainerUnavailable, match="device='cuda' needs a CUDA GPU"):
            trainers.make("torch", net=NET, n_in=N_IN, n_out=N_OUT, device="cuda")


def test_torch_threads_option_sets_torch_threads():
    import torch

    before = torch.get_num_threads()
    try:
        with trainers.make("torch", net=NET, n_in=N_IN, n_out=N_OUT, threads=1) as t:
            torch.set_num_threads(2)  # someone else changed the process-wide setting ...
            t.step(*batch(), 0.1)
            assert torch.get_num_threads() == 1  # ... and the trainer's step restores its own
    finally:
        torch.set_num_threads(before)


def test_theano_absent_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("PARBP_THEANO_PYTHON", str(tmp_path / "no-such-python"))
    T = trainers.get("theano")
    ok, why = T.availability()
    assert not ok and "make theano-env" in why and "no-such-python" in why
    assert "theano" not in trainers.available()
    with pytest.raises(TrainerUnavailable, match="make theano-env"):
        T(net=NET, n_in=N_IN, n_out=N_OUT)


def test_theano_env_without_theano_says_how(monkeypatch):
    # the main venv's python exists but has no theano: that must be caught, not crash later
    monkeypatch.setenv("PARBP_THEANO_PYTHON", sys.executable)
    ok, why = trainers.get("theano").availability()
    assert not ok and "cannot import theano" in why and "make theano-env" in why


# -- the Theano worker: protocol and lifetime ---------------------------------------------------------
def test_protocol_round_trip():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros((0, 4)), np.array(3, dtype=np.int64),
              np.asfortranarray(np.arange(6.0).reshape(2, 3))]
    buf = io.BytesIO()
    theano_worker.write_message(buf, {"op": "x", "lr": 0.25}, arrays)
    theano_worker.write_message(buf, {"op": "y"})
    buf.seek(0)
    header, got = theano_worker.read_message(buf)
    assert header == {"op": "x", "lr": 0.25}
    for a, b in zip(arrays, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert theano_worker.read_message(buf) == ({"op": "y"}, [])
    assert theano_worker.read_message(buf) is None  # a clean end of stream
    buf = io.BytesIO(buf.getvalue()[:-3])  # a truncated message is an error, not a silent None
    theano_worker.read_message(buf)
    with pytest.raises(EOFError):
        theano_worker.read_message(buf)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][0] != "Z"


def _wait_gone(pid, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_theano_worker_stops_on_close():
    if not theano_ready():
        pytest.skip("the Theano env is absent")
    t = trainers.make("theano", net=NET, n_in=N_IN, n_out=N_OUT, seed=SEED)
    pid = t.pid
    assert _alive(pid)
    t.close()
    assert _wait_gone(pid)
    t.close()  # twice is harmless


def test_theano_worker_dies_with_a_crashed_parent():
    if not theano_ready():
        pytest.skip("the Theano env is absent")
    # a parent that starts a worker and is then killed without any chance to clean up
    code = (
        "import os, signal, parbp.trainers as tr\n"
        f"t = tr.make('theano', net={NET}, n_in={N_IN}, n_out={N_OUT})\n"
        "print(t.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr
    assert _wait_gone(int(out.stdout.split()[0])), "the Theano worker outlived its parent"


def test_theano_blas_choices():
    if not theano_ready():
        pytest.skip("the Theano env is absent")
    with pytest.raises(ValueError, match="blas must be one of"):
        trainers.make("theano", net=NET, n_in=N_IN, n_out=N_OUT, blas="mkl")
    X, Y = batch(seed=5)
    ref = ReferenceTrainer(net=NET, n_in=N_IN, n_out=N_OUT, seed=SEED)
    ref_loss = ref.step(X, Y, 0.5)
    # "numpy": Theano's BLAS through numpy's C API (no linking), the configuration that works everywhere
    with trainers.make("theano", net=NET, n_in=N_IN, n_out=N_OUT, dtype="float64", seed=SEED, blas="numpy") as t:
        assert t.versions["blas"] == ""
        assert t.step(X, Y, 0.5) == pytest.approx(ref_loss, rel=1e-12)
        assert_params_close(t.params, ref.params, rtol=1e-10, atol=1e-12)
    # the default links the OpenBLAS bundled with the env's scipy when there is one
    with trainers.make("theano", net=NET, n_in=N_IN, n_out=N_OUT, seed=SEED) as t:
        assert t.versions["blas"] == "" or "-l:libopenblas" in t.versions["blas"]


def test_theano_worker_that_never_answers_times_out(monkeypatch, tmp_path):
    # a stand-in "python" that reads its input and never replies: the start must fail, not hang
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PARBP_THEANO_PYTHON", str(fake))
    T = trainers.get("theano")
    monkeypatch.setattr(T, "availability", classmethod(lambda cls: (True, "")))
    monkeypatch.setattr(T, "start_timeout_s", 1)
    start = time.monotonic()
    with pytest.raises(TrainerUnavailable, match="did not answer 'init' within 1 s"):
        T(net=NET, n_in=N_IN, n_out=N_OUT)
    assert time.monotonic() - start < 10
