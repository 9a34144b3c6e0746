"""Checkpoints: a run killed after any epoch and resumed ends with the parameters of one never stopped, bit for bit.

Real processes and SIGKILL for the numpy and threads trainers; every other deterministic CPU trainer resumes
in-process from a checkpoint written by a shorter run. Damaged and foreign checkpoints are refused.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from parbp import checkpoint, train, trainers
from parbp.checkpoint import CheckpointError, CheckpointMismatch

from test_train import toy

# A child process: trains on the toy set, checkpointing to argv[2] (or not, if "-"), then saves its final
# parameters to argv[3]. Run under nothing but the library, like a user's script or a notebook kernel.
CHILD = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_train import toy
from parbp import checkpoint, train, trainers
impl, ckpt, out, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = {{"threads": 2}} if "threads" in trainers.get(impl).options else {{}}
ds = toy(n=6000, n_in=64)
with trainers.make(impl, net=[128], n_in=ds.n_in, n_out=ds.n_out, seed=3, **options) as t:
    h = train.fit(t, ds, epochs=epochs, batch_size=5, lr=0.5, lr_decay=0.05, seed=7, progress=False,
                  checkpoint=None if ckpt == "-" else ckpt, resume=True)
    checkpoint.save_params(out, t.params, {{"history": h.drop(columns="seconds").to_dict("list")}})
"""
EPOCHS = 16  # an epoch takes ~0.1 s: room for the kill to land well before the end, even under load


def child(tmp_path, impl, ckpt, out, epochs=EPOCHS):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__)))
    return subprocess.Popen([sys.executable, str(script), impl, str(ckpt), str(out), str(epochs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def epoch_of(path) -> int:
    try:
        return checkpoint.load(path)[1]["epoch"]
    except (FileNotFoundError, CheckpointError):
        return 0


def assert_same_bits(a, b):
    assert len(a) == len(b)
    for (Wa, ba), (Wb, bb) in zip(a, b):
        assert Wa.dtype == Wb.dtype and Wa.tobytes() == Wb.tobytes() and ba.tobytes() == bb.tobytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final parameters of runs never stopped, per trainer."""
    out = {}
    tmp = tmp_path_factory.mktemp("uninterrupted")
    for impl in ("numpy", "threads"):
        p = child(tmp, impl, "-", tmp / f"{impl}.npz")
        assert p.wait(timeout=300) == 0, p.stderr.read()
        out[impl] = checkpoint.load_params(tmp / f"{impl}.npz")
    return out


@pytest.mark.parametrize("impl,k", [("numpy", 1), ("numpy", 5), ("threads", 2)])
def test_killed_after_epoch_k_and_resumed_is_identical(tmp_path, uninterrupted, impl, k):
    ckpt, out = tmp_path / "run.ckpt.npz", tmp_path / "final.npz"
    p = child(tmp_path, impl, ckpt, out)
    deadline = time.monotonic() + 240
    while epoch_of(ckpt) < k:
        assert p.poll() is None, f"the run ended before epoch {k}: {p.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    killed_at = epoch_of(ckpt)
    assert k <= killed_at < EPOCHS and not out.exists()  # it really was stopped part way
    p = child(tmp_path, impl, ckpt, out)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    params, meta = checkpoint.load_params(out)
    ref_params, ref_meta = uninterrupted[impl]
    assert_same_bits(params, ref_params)
    assert meta["history"] == ref_meta["history"]  # the history too, timings aside


def fit_small(impl, epochs, ckpt=None, resume=False, **kw):
    ds = toy(n=400, n_in=12)
    options = {"threads": 2} if "threads" in trainers.get(impl).options else {}
    args = dict(net=[16], n_in=ds.n_in, n_out=ds.n_out, seed=1, **options)
    args.update(kw.pop("trainer", {}))
    with trainers.make(impl, **args) as t:
        fit_args = dict(epochs=epochs, batch_size=kw.pop("batch_size", 20), lr=0.8, lr_decay=0.1, seed=2,
                        progress=False, checkpoint=ckpt, resume=resume)
        h = train.fit(t, kw.pop("dataset", ds), **{**fit_args, **kw})
        return t.params, h


DETERMINISTIC = [n for n in trainers.available() if n not in trainers.gpu() and n not in ("hogwild", "theano")]


@pytest.mark.parametrize("impl", DETERMINISTIC)
def test_every_deterministic_cpu_trainer_resumes_bit_for_bit(tmp_path, impl):
    ckpt = tmp_path / "c.npz"
    fit_small(impl, 2, ckpt)  # a run that stopped after epoch 2
    resumed, h = fit_small(impl, 4, ckpt, resume=True)
    straight, h0 = fit_small(impl, 4)
    assert_same_bits(resumed, straight)
    assert h.drop(columns="seconds").equals(h0.drop(columns="seconds"))
    assert checkpoint.load(ckpt)[1]["epoch"] == 4


def test_a_finished_checkpoint_resumes_to_its_result_without_training(tmp_path):
    ckpt = tmp_path / "c.npz"
    done, h = fit_small("numpy", 3, ckpt)
    again, h2 = fit_small("numpy", 3, ckpt, resume=True)
    assert_same_bits(done, again)
    assert h2.seconds.tolist() == h.seconds.tolist()  # loaded, not retrained
    with pytest.raises(ValueError, match="at epoch 3, beyond the 2 epochs"):
        fit_small("numpy", 2, ckpt, resume=True)


def test_an_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    ckpt = tmp_path / "c.npz"
    fit_small("numpy", 1, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match="resume it"):
        fit_small("numpy", 2, ckpt)
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("change,field", [
    (dict(trainer=dict(net=[17])), "sizes"),
    (dict(trainer=dict(seed=9)), "init_seed"),
    (dict(seed=3), "seed"),
    (dict(batch_size=25), "batch_size"),
    (dict(lr=0.5), "lr"),
    (dict(dataset=toy(n=400, n_in=12, seed=5)), "dataset"),
])
def test_a_checkpoint_of_another_run_is_refused_naming_the_field(tmp_path, change, field):
    ckpt = tmp_path / "c.npz"
    fit_small("numpy", 1, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointMismatch, match=rf"belongs to another run.*\b{field}: checkpoint has"):
        fit_small("numpy", 2, ckpt, resume=True, **change)
    assert ckpt.read_bytes() == before  # the failed run wrote nothing


def test_another_trainer_is_refused(tmp_path):
    ckpt = tmp_path / "c.npz"
    fit_small("numpy", 1, ckpt)
    with pytest.raises(CheckpointMismatch, match="trainer: checkpoint has 'numpy', this run has 'serial-blas'"):
        fit_small("serial-blas", 2, ckpt, resume=True)


def test_truncated_and_corrupt_checkpoints_are_refused_and_left_alone(tmp_path):
    ckpt = tmp_path / "c.npz"
    fit_small("numpy", 1, ckpt)
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        fit_small("numpy", 2, ckpt, resume=True)
    assert ckpt.read_bytes() == good[: len(good) // 2]
    # one flipped byte inside the weights: the zip's CRC (or the recorded SHA-256) notices
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="corrupt"):
        fit_small("numpy", 2, ckpt, resume=True)
    ckpt.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        fit_small("numpy", 2, ckpt, resume=True)


def test_rewritten_arrays_with_a_valid_zip_are_caught_by_the_digest(tmp_path):
    ckpt = tmp_path / "c.npz"
    fit_small("numpy", 1, ckpt)
    with np.load(ckpt) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["W0"] = arrays["W0"] + 1  # a well-formed file whose weights are not the ones recorded
    np.savez(ckpt, **arrays)
    with pytest.raises(CheckpointError, match="do not match the SHA-256"):
        checkpoint.load(ckpt)


def test_saved_networks_round_trip(tmp_path):
    params, _ = fit_small("numpy", 1)
    path = checkpoint.save_params(tmp_path / "m.npz", params, {"net": "1h", "test_acc": 0.5})
    loaded, meta = checkpoint.load_params(path)
    assert_same_bits(params, loaded)
    assert meta == {"net": "1h", "test_acc": 0.5}
    with np.load(path) as z:  # readable without parbp too
        assert json.loads(str(z["meta"]))["net"] == "1h" and z["W0"].shape == params[0][0].shape
    with pytest.raises(CheckpointError, match="saved network, not a training checkpoint"):
        checkpoint.load(path)
