"""parbp.ipp_bench: the goal bookkeeping on a made-up table, and one tiny real run on MPI engines."""
import pandas as pd
import pytest

from parbp import ipp_bench


def table(dp=1.7, best=1.35, idle=(0.40, 0.38), kept="2;1"):
    rows = [dict(method="serial", schedule="-", micro_batches=1, vs_serial=1.0),
            dict(method="data parallel", schedule="-", micro_batches=1, vs_serial=dp),
            dict(method="model parallel", schedule="gpipe", micro_batches=8, vs_serial=best - 0.1, idle_measured=0.3,
                 idle_predicted=0.3, acts_kept_measured="8;8", acts_kept_formula="8;8"),
            dict(method="model parallel", schedule="1f1b", micro_batches=8, vs_serial=best, idle_measured=idle[0],
                 idle_predicted=idle[1], acts_kept_measured=kept, acts_kept_formula="2;1")]
    return pd.DataFrame(rows)


def test_goals_met_and_missed():
    ok = ipp_bench._goals(table(), p=2).set_index(["method", "schedule"])
    assert ok.met_throughput[("data parallel", "-")] and ok.met_throughput[("model parallel", "1f1b")]
    assert ok.goal_throughput[("model parallel", "gpipe")] == ""  # only the best schedule at m = 8 carries it
    assert ok.met_idle[("model parallel", "1f1b")] and ok.met_memory[("model parallel", "1f1b")]
    bad = ipp_bench._goals(table(dp=1.5, best=1.2, idle=(0.5, 0.4), kept="3;1"), p=2).set_index(["method", "schedule"])
    assert not bad.met_throughput[("data parallel", "-")] and not bad.met_throughput[("model parallel", "1f1b")]
    assert not bad.met_idle[("model parallel", "1f1b")] and not bad.met_memory[("model parallel", "1f1b")]


def test_bad_arguments():
    with pytest.raises(SystemExit):
        ipp_bench.main(["--micro-batches", "0"])
    with pytest.raises(SystemExit):
        ipp_bench.main(["--steps", "0"])


def test_tiny_run_on_mpi_engines(tmp_path, capsys):
    out = tmp_path / "goals.csv"
    assert ipp_bench.main(["--dataset", "toy", "--subset", "400", "--net", "16,16", "--batch-size", "40",
                           "--micro-batches", "2", "8", "--steps", "2", "--rounds", "1", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert {"serial", "data parallel", "model parallel"} == set(df.method)
    assert set(df[df.method == "model parallel"].schedule) == {"plain", "gpipe", "1f1b"}
    assert (df.examples_per_s > 0).all() and {"cpu", "blas", "loadavg_before", "met_throughput"} <= set(df.columns)
    assert (df[df.method == "model parallel"].ceiling_vs_serial > 0).all()
    assert (df.vs_serial_min <= df.vs_serial).all() and (df.vs_serial <= df.vs_serial_max).all()
    assert (df[df.method == "serial"][["vs_serial", "vs_serial_min", "vs_serial_max"]] == 1).all(axis=None)
    assert "goals:" in capsys.readouterr().out
