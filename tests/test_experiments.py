"""The notebooks' helpers: parameter checks fail early and clearly; speedups and the grid search are right."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from parbp import experiments as ex  # noqa: E402
from parbp import results  # noqa: E402
from parbp import trainers  # noqa: E402
from parbp.data import Dataset  # noqa: E402


# -- parameter checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("values, want", [(100, [100]), ([1000, 10, 100, 10], [10, 100, 1000]), ((1,), [1])])
def test_positive_ints_accepts(values, want):
    assert ex.positive_ints("batch_sizes", values) == want


@pytest.mark.parametrize("values", [0, -5, [], [10, 0], [10, 2.5], "100", [True], None, [np.nan]])
def test_positive_ints_rejects(values):
    with pytest.raises(ValueError, match="batch_sizes must be"):
        ex.positive_ints("batch_sizes", values)


@pytest.mark.parametrize("values", [0.0, -1, [], [0.1, float("inf")], ["0.1"], [float("nan")]])
def test_positive_floats_rejects(values):
    with pytest.raises(ValueError, match="lrs must be"):
        ex.positive_floats("lrs", values)


def test_lists_from_the_papermill_command_line():
    # papermill -p batch_sizes "[10, 100]" hands the notebook a string
    assert ex.positive_ints("batch_sizes", "[100, 10]") == [10, 100]
    assert ex.positive_floats("lrs", "[0.1, 0.03]") == [0.03, 0.1]
    assert ex.check_net("[64, 32]") == [64, 32]
    assert ex.resolve_impls('["torch"]')[0] == ["serial-example", "torch"]
    with pytest.raises(ValueError, match="cannot read"):
        ex.positive_ints("batch_sizes", "[10, 100")


def test_positive_floats_sorts_and_dedups():
    assert ex.positive_floats("lrs", [3, 0.1, 1, 0.1]) == [0.1, 1.0, 3.0]


def test_check_net_and_dataset():
    assert ex.check_net("2h") == "2h"
    assert ex.check_net([64, 32]) == [64, 32]
    with pytest.raises(ValueError, match=r"unknown net '3h'.*'1h', '2h'"):
        ex.check_net("3h")
    with pytest.raises(ValueError, match="positive"):
        ex.check_net([64, 0])
    assert ex.check_dataset("kddcup99") == "kddcup99"
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*mnist"):
        ex.check_dataset("cifar")


def test_check_fraction():
    assert ex.check_fraction("lr_decay", 0.01) == 0.01
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match=r"lr_decay must be a number in \[0.0, 1.0\)"):
            ex.check_fraction("lr_decay", bad)


def test_resolve_impls_auto_has_the_study_and_the_baselines():
    cpu, gpu, skipped = ex.resolve_impls("auto")
    assert cpu[0] == "serial-example"
    for name in ("serial-blas", "threads", "torch", "pytensor"):
        assert name in cpu
    assert "reference" not in cpu  # the float64 checker is not raced
    everything = set(cpu) | set(gpu) | set(skipped)
    assert {*trainers.gpu(), ex.TORCH_CUDA, "theano"} <= everything
    for name, why in skipped.items():
        assert why, f"{name} skipped without a reason"
    for name in gpu:
        assert name in (*trainers.gpu(), ex.TORCH_CUDA)


def test_resolve_impls_adds_the_baseline_and_rejects_unknown_names():
    cpu, gpu, _ = ex.resolve_impls(["torch"])
    assert cpu == ["serial-example", "torch"] and gpu == []
    with pytest.raises(ValueError, match=r"unknown implementation\(s\) \['tensorflow'\].*serial-example"):
        ex.resolve_impls(["torch", "tensorflow"])
    with pytest.raises(ValueError, match="unknown implementation"):
        ex.resolve_impls([])


def test_resolve_path_is_relative_to_the_notebooks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # wherever papermill runs from ...
    assert ex.resolve_path("../figures") == (ex.NOTEBOOKS.parent / "figures").resolve()  # ... same place
    assert ex.resolve_path(tmp_path / "x") == tmp_path / "x"


# -- tables --------------------------------------------------------------------------------------------
def bench_rows():
    rows = [("serial-example", 1, 10, 100.0), ("serial-example", 1, 100, 50.0),
            ("threads", 1, 10, 20.0), ("threads", 2, 10, 10.0), ("threads", 2, 100, 5.0),
            ("torch", 2, 100, 25.0)]
    return pd.DataFrame([dict(impl=i, threads=t, batch=b, ms_per_step=ms, net="1h") for i, t, b, ms in rows])


def test_with_speedup_divides_by_serial_example_at_one_thread():
    df = ex.with_speedup(bench_rows())
    got = {(r.impl, r.threads, r.batch): r.speedup for r in df.itertuples()}
    assert got[("serial-example", 1, 10)] == 1.0
    assert got[("threads", 2, 10)] == 10.0
    assert got[("threads", 2, 100)] == 10.0
    assert got[("torch", 2, 100)] == 2.0


def test_with_speedup_needs_the_baseline():
    df = bench_rows()
    with pytest.raises(ValueError, match="no serial-example rows"):
        ex.with_speedup(df[df.impl != "serial-example"])


def test_fastest_threads_keeps_each_impls_best_run_per_batch():
    df = bench_rows()
    df.loc[(df.impl == "threads") & (df.threads == 2) & (df.batch == 10), "ms_per_step"] = 30.0  # 2 threads lose
    got = ex.fastest_threads(df)
    assert len(got) == 5  # one row per (impl, batch)
    assert set(zip(got.impl, got.batch, got.threads)) == {
        ("serial-example", 10, 1), ("serial-example", 100, 1), ("threads", 10, 1), ("threads", 100, 2),
        ("torch", 100, 2)}


def test_best_per_batch_and_thread_scaling():
    df = ex.with_speedup(bench_rows())
    best = ex.best_per_batch(df)
    assert list(zip(best.batch, best.impl, best.threads)) == [(10, "threads", 2), (100, "threads", 2)]
    scaling = ex.thread_scaling(df, "threads")
    assert scaling.loc[10, 1] == 5.0 and scaling.loc[10, 2] == 10.0 and np.isnan(scaling.loc[100, 1])
    with pytest.raises(ValueError, match="no hybrid rows"):
        ex.thread_scaling(df, "hybrid")


def test_an_epoch_is_the_datasets_training_split():
    df = ex.per_epoch(bench_rows(), 1_001)
    assert (df.epoch_examples == 1_001).all()
    row = df[(df.impl == "serial-example") & (df.batch == 100)].iloc[0]
    assert row.s_per_epoch == pytest.approx(0.050 * 11)  # 11 steps of 100 cover 1,001 examples
    with pytest.raises(ValueError, match="examples"):
        ex.per_epoch(bench_rows(), 0)


def test_log_ticks_are_plain_numbers():
    assert [results.plain_number(v) for v in (1, 3, 10, 1000, 10_000, 0.3, 0.01)] == \
        ["1", "3", "10", "1,000", "10,000", "0.3", "0.01"]
    df = ex.with_speedup(bench_rows())
    fig = ex.plot_vs_batch(df, "ms_per_step", "ms", "t")
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for axis in (ax.xaxis, ax.yaxis)
              for t in axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)]
    assert labels and not any("times" in s or "^" in s or "e+" in s for s in labels), labels
    assert "100" in labels
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2, 4, 8], [1, 2, 3, 4])
    ax.set_xscale("log", base=2)
    ex.plain_log_ticks(ax)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels() if 1 <= t.get_position()[0] <= 8] == ["1", "2", "4", "8"]


def test_a_trainer_has_one_colour_in_every_figure():
    colours, markers = ex.impl_style(["threads", "torch"])
    alone, _ = ex.impl_style(["serial-example", "numpy", "threads"])
    assert colours["threads"] == alone["threads"] and colours["torch"] != colours["threads"]
    df = ex.with_speedup(bench_rows())
    fig = ex.plot_speedup_vs_threads(df, "t")
    assert len(fig.legends) == 1 and not fig.axes[0].get_legend()  # one legend for the figure


def test_the_gpu_figure_has_a_column_per_net():
    rows = bench_rows().assign(env_gpu="a GPU", gflops=lambda d: 1e3 / d.ms_per_step)
    fig = ex.plot_gpu_speed(pd.concat([rows, rows.assign(net="2h")]))
    assert [ax.get_title() for ax in fig.axes[:2]] == ["Net-1h", "Net-2h"] and len(fig.axes) == 4


def test_the_threads_figure_wraps_three_panels_to_a_row():
    rows = [dict(impl=i, threads=t, batch=b, ms_per_step=100.0 / t if i == "threads" else 100.0, net="1h")
            for b in (1, 10, 100, 1000) for i in ("serial-example", "threads") for t in (1, 2)
            if i == "threads" or t == 1]
    fig = ex.plot_speedup_vs_threads(ex.with_speedup(pd.DataFrame(rows)), "t")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 4 and len({round(ax.get_position().y0, 2) for ax in panels}) == 2
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 1  # in the empty fifth slot
    with pytest.raises(ValueError, match="unknown figure 'speed'"):
        ex.speedup_figure("speed", pd.DataFrame(rows), "t")


def test_plots_draw_every_impl():
    df = ex.with_speedup(bench_rows())
    fig = ex.plot_vs_batch(df, "ms_per_step", "ms", "t")
    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert labels == {"serial-example", "threads", "torch"}
    fig = ex.plot_speedup_vs_threads(df, "t")
    assert len(fig.axes) == 1  # threads was timed at 2 thread counts at batch 10 only
    with pytest.raises(ValueError, match="more than one thread count"):
        ex.plot_speedup_vs_threads(df[df.impl != "threads"], "t")


# -- grid search ---------------------------------------------------------------------------------------
def toy_dataset(n=300, seed=0):
    """Two separable blobs in 8 dimensions, one-hot over 2 classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = (rng.normal(size=(n, 8)) + 2.0 * y[:, None]).astype(np.float32)
    Y = np.eye(2, dtype=np.float32)[y]
    a, b = n // 2, 3 * n // 4
    return Dataset("toy", X[:a], Y[:a], X[a:b], Y[a:b], X[b:], Y[b:])


def test_grid_search_picks_the_rate_with_the_best_validation_accuracy():
    ds = toy_dataset()
    grid, chosen = ex.grid_search("numpy", ds, [1e-4, 1.0], epochs=3, batch_size=10, net=[16])
    assert chosen == 1.0  # 1e-4 barely moves the weights in 3 epochs
    assert set(grid.lr) == {1e-4, 1.0}
    assert "test_acc" not in grid  # choosing a rate must not look at the test set
    last = grid[grid.epoch == 3].set_index("lr").val_acc
    assert last[1.0] > 0.9 and last[1.0] > last[1e-4]


def test_fastest_cpu_trainer_falls_back(monkeypatch):
    name = trainers.fastest_cpu()
    assert not trainers.why_unavailable(name) and trainers.fastest_cpu(threaded=False) != "threads"
    monkeypatch.setattr(trainers, "why_unavailable", lambda n: "" if n == "numpy" else "not here")
    assert trainers.fastest_cpu() == "numpy"
    monkeypatch.setattr(trainers, "why_unavailable", lambda n: "not here")
    with pytest.raises(trainers.TrainerUnavailable, match="no CPU trainer"):
        trainers.fastest_cpu()
