"""The benchmark's Python API and command line on tiny configurations (no timing asserts)."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from parbp import bench, data
from parbp.nets import flops_per_step

TINY = dict(nets=[[37]], n_in=53, n_out=7, repeats=2, warmup=1, sgemm_n=128, rewarm_s=0.001)


def test_run_returns_one_row_per_configuration():
    df = bench.run(["serial-blas", "threads", "numpy"], batches=[8, 16], threads=[1, 2], **TINY)
    assert list(df.columns) == bench.COLUMNS
    # serial-blas and numpy take no threads option: once each at threads=1; threads at 1 and 2
    got = sorted(zip(df.impl, df.threads, df.batch))
    want = sorted([(i, 1, b) for i in ("serial-blas", "numpy") for b in (8, 16)] + [("threads", t, b) for t in (1, 2) for b in (8, 16)])
    assert got == want
    assert (df.ms_per_step > 0).all() and (df.samples == 2).all()
    # every round's time is kept, so two rows of one run can be divided round by round
    rounds = [bench.round_times(t) for t in df.ms_rounds]
    assert all(len(r) == 2 for r in rounds)
    np.testing.assert_allclose([np.median(r) for r in rounds], df.ms_per_step, rtol=1e-4)
    assert (df.net == "53-37-7").all()
    sizes = [53, 37, 7]
    np.testing.assert_allclose(df.gflops, [flops_per_step(sizes, b) / (ms / 1e3) / 1e9 for b, ms in zip(df.batch, df.ms_per_step)])
    np.testing.assert_allclose(df.s_per_epoch, df.ms_per_step / 1e3 * np.ceil(bench.EPOCH_EXAMPLES / df.batch))
    np.testing.assert_allclose(df.vs_sgemm, df.gflops / df.sgemm_gflops)
    # the reference is the best sgemm of the libraries here, each recorded beside it
    libraries = df[[f"sgemm_{lib}_gflops" for lib in bench.SGEMM_LIBRARIES]]
    np.testing.assert_allclose(df.sgemm_gflops, libraries.max(axis=1))
    assert (df.sgemm_numpy_gflops > 0).all()
    assert all(df.sgemm_gflops == df[[f"sgemm_{lib}_gflops" for lib in df.sgemm_best]].to_numpy().diagonal())
    assert set(df.gemm_backend) <= set(bench.blas.available_backends()) and df.gemm_reason.str.len().gt(0).all()
    assert set(df[df.impl == "numpy"].gemm_backend) == {"openblas"}
    assert (df.loadavg >= 0).all()
    assert "torch" not in set(df.impl)  # timed alongside for vs_torch, returned only if asked
    # efficiency: the same trainer's one-thread time over threads × this time
    threads = df[df.impl == "threads"].set_index(["threads", "batch"]).ms_per_step
    for b in (8, 16):
        eff = df[(df.impl == "threads") & (df.threads == 2) & (df.batch == b)].efficiency.item()
        assert eff == pytest.approx(threads[1, b] / (2 * threads[2, b]))
    assert (df[df.threads == 1].efficiency == 1).all()
    for ceiling in ("sgemm_efficiency", "stream_efficiency"):
        assert (df[df.threads == 1][ceiling] == 1).all()
        assert ((df[df.threads == 2][ceiling] > 0) & (df[df.threads == 2][ceiling] < 3)).all()
    # the round-by-round ceiling: its lowest round can be no higher than the ratio of the medians
    assert (df[df.threads == 1].sgemm_efficiency_low == 1).all() and (df[df.threads == 1].rounds_core_lost == 0).all()
    two = df[df.threads == 2]
    assert ((two.sgemm_efficiency_low > 0) & (two.sgemm_efficiency_low <= two.sgemm_efficiency + 1e-12)).all()
    assert two.rounds_core_lost.between(0, two.samples.max()).all()
    if not bench.trainers.why_unavailable("torch"):
        assert np.isfinite(df.vs_torch).all()


def test_variants_are_timed_as_rows_of_their_own():
    df = bench.run(["threads", "threads:update=partials"], batches=[16], threads=[2], compare_torch=False, **TINY)
    assert list(df.impl) == ["threads", "threads:update=partials"]
    assert bench.variant("hybrid:groups=2:update=rows") == ("hybrid", {"groups": 2, "update": "rows"})
    with pytest.raises(ValueError, match="update must be one of"):  # values are checked by the trainer
        bench.run(["threads:update=sum"], batches=[16], threads=[2], compare_torch=False, **TINY)


def test_run_with_torch_asked_has_ratio_one_for_itself():
    if bench.trainers.why_unavailable("torch"):
        pytest.skip(bench.trainers.why_unavailable("torch"))
    df = bench.run(["torch"], batches=[8], threads=[2], **TINY)
    assert list(df.impl) == ["torch"] and df.vs_torch.iloc[0] == pytest.approx(1.0)


def test_run_without_torch_alongside():
    df = bench.run(["serial-blas"], batches=[8], compare_torch=False, **TINY)
    assert list(df.impl) == ["serial-blas"] and df.vs_torch.isna().all()


def test_run_skips_unavailable_trainers_with_a_reason():
    messages = []
    df = bench.run(["serial-blas", *bench.trainers.gpu()], batches=[8], progress=messages.append, **TINY)
    missing = [n for n in bench.trainers.gpu() if bench.trainers.why_unavailable(n)]
    assert set(df.impl) == {"serial-blas", *(set(bench.trainers.gpu()) - set(missing))}
    for name in missing:
        assert any(m.startswith(f"skipping {name}:") for m in messages)


def test_run_with_nothing_available_returns_an_empty_table():
    missing = [n for n in bench.trainers.gpu() if bench.trainers.why_unavailable(n)]
    if not missing:
        pytest.skip("every GPU trainer is available here")
    df = bench.run(missing, batches=[8], compare_torch=False, **TINY)
    assert df.empty and list(df.columns) == bench.COLUMNS


def test_measure_and_sgemm():
    m = bench.measure("threads", net=[37], batch=8, threads=2, n_in=53, n_out=7, repeats=2)
    assert m["impl"] == "threads" and m["threads"] == 2 and m["ms_per_step"] > 0 and m["gflops"] > 0
    assert bench.sgemm_gflops(threads=1, n=64, repeats=2) > 0


@pytest.mark.parametrize("call, message", [
    (lambda: bench.run([], batches=[8], **TINY), "no implementations"),
    (lambda: bench.run(["no-such-trainer"], batches=[8], **TINY), "unknown trainer"),
    (lambda: bench.run(["hybrid:group=2"], batches=[8], **TINY), r"OPTION one of \['groups', 'update'\]"),
    (lambda: bench.run(["serial-blas"], batches=[0], **TINY), "must be positive"),
    (lambda: bench.run(["serial-blas"], batches=[8], threads=[], **TINY), "threads is empty"),
    (lambda: bench.run(["serial-blas"], batches=[8], device="tpu", **TINY), "device must be"),
    (lambda: bench.measure("serial-blas", net=[37], batch=8, threads=2, n_in=53, n_out=7), "takes no threads"),
])
def test_bad_api_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cli_writes_a_well_formed_csv(tmp_path):
    out = tmp_path / "bench.csv"
    cmd = [sys.executable, "-m", "parbp.bench", "--net", "1h", "--dataset", "kddcup99", "--batch", "4", "8",
           "--impl", "serial-blas", "threads", "--threads", "1", "2", "--repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    assert "÷ sgemm" in proc.stdout and f"wrote {out}" in proc.stdout
    df = pd.read_csv(out)
    n_in, n_out = data.dims("kddcup99")
    assert len(df) == 2 + 4  # serial-blas at threads=1; threads at 1 and 2; two batch sizes each
    assert set(bench.COLUMNS) <= set(df.columns) and (df.dataset == "kddcup99").all()
    assert (df.n_in == n_in).all() and (df.n_out == n_out).all() and (df.net == "1h").all()
    assert df.filter(like="env_").shape[1] >= 5 and df.env_cores_logical.iloc[0] >= 1
    assert (df.ms_per_step > 0).all() and df.gflops.notna().all()


@pytest.mark.parametrize("args, message", [
    (["--impl", "nope"], "unknown trainer 'nope'; registered trainers are: reference, numpy"),
    (["--impl", "threads:update"], "expected threads:OPTION=VALUE with OPTION one of ['update']"),
    (["--impl", "threads:threads=2"], "OPTION one of ['update']"),
    (["--impl", "reference:x=1"], "OPTION one of none (it takes no options)"),
    (["--batch", "0"], "expected a positive integer, got 0"),
    (["--threads", "two"], "expected a positive integer, got 'two'"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["--net", "3h"], "invalid choice: '3h'"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--repeats", "-1"], "expected a positive integer"),
])
def test_cli_rejects_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.parse_args(args)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_gemm_fixed_cost_fits_a_line():
    table, fit = bench.gemm_fixed_cost(rows=(4, 8, 16), n=64, repeats=2)
    assert list(table.rows) == [4, 8, 16] and (table.ms > 0).all()
    # the fit is the least-squares line through the measured points
    np.testing.assert_allclose(np.polyfit(table.rows, table.ms, 1), [fit["per_row_ms"], fit["fixed_ms"]])
    with pytest.raises(ValueError, match="at least two positive sizes"):
        bench.gemm_fixed_cost(rows=(8,), n=64)
    for backend in bench.blas.available_backends():
        table, fit = bench.gemm_fixed_cost(rows=(4, 8), n=64, repeats=1, backend=backend)
        assert set(table.backend) == {backend} == {fit["backend"]} and (table.ms > 0).all()
    with pytest.raises(ValueError, match="unknown BLAS backend 'atlas'"):
        bench.gemm_fixed_cost(rows=(4, 8), n=64, backend="atlas")


def test_keep_other_machines_and_by_machine(tmp_path):
    old = pd.DataFrame({"impl": ["torch", "threads"], "env_cpu": ["Intel Xeon", "AMD EPYC"], "ms_per_step": [5.0, 9.0]})
    old.to_csv(tmp_path / "b.csv", index=False)
    new = pd.DataFrame({"impl": ["threads", "torch"], "env_cpu": ["AMD EPYC", "AMD EPYC"], "ms_per_step": [4.0, 8.0]})
    both = bench.keep_other_machines(new, tmp_path / "b.csv")
    assert list(both.env_cpu) == ["AMD EPYC", "AMD EPYC", "Intel Xeon"] and list(both.ms_per_step) == [4.0, 8.0, 5.0]
    assert bench.keep_other_machines(new, tmp_path / "missing.csv") is new
    table = new.assign(net="2h", batch=100, threads=2, vs_sgemm=0.5, sgemm_gflops=300.0, efficiency=0.9)
    summary = bench.by_machine(table)
    assert len(summary) == 1 and summary.best.item() == "threads"
    assert summary.best_over_torch_time.item() == pytest.approx(0.5) and summary.threads_efficiency.item() == 0.9
