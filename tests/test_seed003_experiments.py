"""parbp.seed003_experiments: the jobs it runs, one real job end to end, and findings built from the numbers."""
import math

import pandas as pd
import pytest

from parbp import seed003_experiments as ex

from test_seed003 import TINY, toy  # noqa: F401  (the toy set with a test split)


def test_jobs_cover_every_variant_for_every_seed_and_process_count():
    jobs = list(ex.jobs(0.1, [2, 3], [0, 1]))
    keys = [(f["experiment"], f["variant"], f["processes"], j["seed"]) for f, j in jobs]
    assert len(keys) == len(set(keys))
    per_seed = 1 + 2 * (len(ex.ASYNC) + 1) + 2 * 4 + len(ex.SEED_SETUP) * 3
    assert len(jobs) == 2 * per_seed
    by = {(f["variant"], f["processes"], j["seed"]): j for f, j in jobs}
    assert by["per_worker", 3, 0]["lr"] == pytest.approx(0.1 / 3) and by["per_worker", 3, 0]["processes"] == 4
    assert by["staleness", 2, 1]["async_rule"] == "staleness" and by["staleness", 2, 1]["lr"] == 0.1
    assert by["serial_batch", 3, 0] == dict(mode="allreduce", processes=1, lr=0.1, seed=0, batch_size=300)
    assert by["whole_data_lr_p", 3, 1]["lr"] == pytest.approx(0.3) and by["whole_data_lr_p", 3, 1]["whole_data"]
    assert by["serial_lr_per_worker", 2, 0] == dict(mode="allreduce", processes=1, lr=0.05, seed=0)
    scale = [(f, j) for f, j in ex.jobs(0.1, [2], [0], [3]) if f["experiment"] == "async_seed_scale"]
    assert [(f["variant"], j["mode"], j["processes"], j["lr"]) for f, j in scale] == [
        ("serial", "allreduce", 1, 0.1), ("serial_lr_per_worker", "allreduce", 1, pytest.approx(0.1 / 3)),
        ("per_worker", "async", 4, pytest.approx(0.1 / 3))]
    assert all(j["subset"] is None for _, j in scale)
    assert by["xent_h100", 1, 0]["mode"] == "allreduce" and by["xent_h100", 2, 0]["loss"] == "xent"


def test_a_run_writes_one_row_per_job(toy, tmp_path, monkeypatch):  # noqa: F811
    first = [job for i, job in enumerate(ex.jobs(2.0, [2], [0])) if i in (0, 2, 3)]  # serial, async delta, staleness
    monkeypatch.setattr(ex, "jobs", lambda *args: iter(first))
    out = tmp_path / "explain.csv"
    df = ex.run(toy, 2.0, [2], [0], subset=TINY["subset"], epochs=2, net="16", out=out, dataset="toy",
                impl="numpy", batch_size=TINY["batch_size"])
    assert list(df.columns) == ex.COLUMNS and len(df) == 3
    assert pd.read_csv(out).shape == (3, len(ex.COLUMNS))
    assert list(df.mpi_processes) == [1, 3, 3] and math.isnan(df.staleness_mean[0])
    assert (df.staleness_mean[1:] >= 0).all() and (df.test_acc == df.val_acc).all()  # toy: test split = val split
    with pytest.raises(ValueError, match="at least one"):
        ex.run(toy, 2.0, [2], [])


def _frame(rows):
    base = dict(processes=1, seed=0, staleness_mean=float("nan"), lr=0.1, lr_rule="lr", setting="a test setting")
    return pd.DataFrame([{**base, **r} for r in rows])


def test_findings_follow_the_numbers():
    rows = [dict(experiment="reference", variant="serial", test_acc=0.90),
            dict(experiment="async", variant="delta", processes=3, test_acc=0.50, staleness_mean=2.0),
            dict(experiment="async", variant="staleness", processes=3, test_acc=0.60, staleness_mean=1.0),
            dict(experiment="async", variant="per_worker", processes=3, test_acc=0.89, staleness_mean=2.0),
            dict(experiment="sync", variant="serial_batch", processes=2, test_acc=0.95),
            dict(experiment="sync", variant="average", processes=2, test_acc=0.85)]
    text = " ".join(ex.findings(_frame(rows)))
    assert "within 3 points of serial for every seed with: per_worker" in text
    assert "3 workers: 1.00" in text and "-5.0 pts" in text
    assert "No setting tried beats serial" in text  # serial at batch 200 is not a sync run
    assert "averaging average 0.8500 (seeds 0.8500-0.8500) is outside the seeds' spread of serial_batch" in text
    rows[-1]["test_acc"] = 0.93
    assert "sync/average x2 (+3.0)" in " ".join(ex.findings(_frame(rows)))
    rows[3]["test_acc"] = 0.80
    assert "no rate brings it within 3 points" in " ".join(ex.findings(_frame(rows)))


def test_the_seeds_setup_on_all_the_images_runs_serial_sync_and_both_async_rules():
    jobs = list(ex.seed_setup_jobs([2, 3], [0]))
    assert [(f["variant"], f["processes"], j["mode"], j["processes"]) for f, j in jobs] == [
        ("h100", 1, "allreduce", 1), ("h100", 2, "average", 2), ("h100", 3, "average", 3),
        ("h100_async_delta", 2, "async", 3), ("h100_async_replace", 2, "async", 3),
        ("h100_async_delta", 3, "async", 4), ("h100_async_replace", 3, "async", 4)]
    assert all(j["subset"] is None and j["lr"] == ex.SEED_LR and (j["net"], j["loss"]) == ("100", "mse")
               for _, j in jobs)


def test_findings_set_the_seeds_setup_beside_the_seeds_accuracies():
    rows = [dict(experiment="seed_setup_all", variant="h100", processes=1, test_acc=0.94),
            dict(experiment="seed_setup_all", variant="h100", processes=2, test_acc=0.927),
            dict(experiment="seed_setup_all", variant="h100_async_replace", processes=2, test_acc=0.92)]
    text = " ".join(ex.findings(_frame(rows)))
    assert "serial 0.9400 (seed 0.8880); sync x2 0.9270 (0.9270-0.9270; seed 0.9210)" in text
    assert "Async (replace) in that setup with w workers: x2 0.9200 (0.9200-0.9200; seed 0.9111)" in text
    assert "Serial SGD (the reference)" not in text  # no reference run among these rows
