"""parbp.seed003: the grid search, test scores of saved parameters, and the tables beside the seed's."""
import numpy as np
import pandas as pd
import pytest

from parbp import data, seed003

TINY = dict(dataset="toy", net="16", subset=400, batch_size=40, impl="numpy", epochs=2)


@pytest.fixture(scope="module")
def toy():
    return data.load_first("toy", TINY["subset"])  # its validation split stands in for the test split


@pytest.fixture(scope="module")
def runs(toy):
    grid, lr = seed003.grid_search([0.5, 2.0], toy, **TINY)
    sync = seed003.run("average", 2, lr, toy, **TINY)
    return grid, lr, sync


def test_grid_search_picks_the_best_validation_accuracy(runs):
    grid, lr, _ = runs
    last = grid[grid["rank"] == 0].sort_values("epoch").groupby("lr0").tail(1).set_index("lr0")
    assert lr == last.val_acc.idxmax() and set(last.index) == {0.5, 2.0}
    assert (grid.method == "serial").all()


def test_test_scores_are_those_of_the_final_model(runs):
    # evaluated on the same split, the saved model's scores equal the run's own last validation numbers
    grid, lr, _ = runs
    last = grid[(grid["rank"] == 0) & (grid.lr0 == lr)].sort_values("epoch").iloc[-1]
    assert np.isclose(last.test_acc, last.val_acc) and np.isclose(last.test_loss, last.val_loss, rtol=1e-4)


def test_tables_put_our_rows_beside_the_seeds(runs):
    grid, lr, sync = runs
    import pandas as pd

    df = pd.concat([grid[grid.lr0 == lr], sync], ignore_index=True)
    table = seed003.results_table(df)
    assert set(zip(table.method, table.processes)) == {("serial", 1), ("sync", 2)}
    both = seed003.side_by_side(table, seed003.SEED_RESULTS, ["accuracy", "test_acc"])
    assert len(both) == len(seed003.SEED_RESULTS)  # every seed row, ours where we have it
    assert both.test_acc.notna().sum() == 2 and list(both.method[:2]) == ["serial", "sync"]
    usage = seed003.usage_table(df, cores=2, memory_gib=16)
    assert (usage.memory_percent_of_machine > 0).all()
    assert (usage.set_index("processes").peak_rss_mib_sum.sort_index().diff().dropna() > 0).all()


def test_an_empty_grid_is_refused(toy):
    with pytest.raises(ValueError, match="at least one"):
        seed003.grid_search([], toy, **TINY)


def test_curves_show_serial_on_top_and_whole_epochs():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    rows = [{"method": m, "processes": p, "epoch": e, "val_acc": 0.5 + 0.1 * e, "train_loss": 1.0 / e}
            for m, p in (("serial", 1), ("allreduce", 2), ("async", 2)) for e in (1, 2, 3)]
    fig = seed003.plot_curves(pd.DataFrame(rows), "toy")
    acc = fig.axes[0]
    serial = next(line for line in acc.lines if line.get_label().startswith("serial"))
    assert serial.get_linestyle() == "--" and serial.get_zorder() > max(
        line.get_zorder() for line in acc.lines if line is not serial)
    assert all(float(t).is_integer() for t in acc.get_xticks())
    assert acc.get_ylabel() == "validation accuracy" and len(fig.legends[0].get_texts()) == 3


def test_repeat_times_runs_the_timed_methods_again_in_rounds(runs, toy):
    grid, lr, sync = runs
    table = seed003.results_table(pd.concat([grid[grid.lr0 == lr], sync], ignore_index=True))
    times = seed003.repeat_times(table, 2, lr, toy, **TINY)
    assert sorted(times.groupby(["method", "processes"]).size().items()) == [(("serial", 1), 2), (("sync", 2), 2)]
    assert (times.time_s > 0).all() and sorted(times["round"].unique()) == [0, 1]
    first = times[times["round"] == 0].set_index("method").time_s
    assert first["serial"] == table.set_index("method").time_s["serial"]  # round 0 is the table's own run
