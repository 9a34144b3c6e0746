import os

import pandas as pd
import pytest

from parbp import results


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        results.atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_written_files_are_readable_by_others(tmp_path):
    path = results.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "x.csv")
    assert os.stat(path).st_mode & 0o044 == 0o044 and path.read_text() == "a\n1\n"


def test_figures_are_redirected_only_from_the_repo_figures_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PARBP_FIGURES", str(tmp_path / "elsewhere"))
    assert results.redirect(results.FIGURES / "05_x.png") == tmp_path / "elsewhere" / "05_x.png"
    assert results.redirect(tmp_path / "mine.csv") == tmp_path / "mine.csv"
    monkeypatch.delenv("PARBP_FIGURES")
    assert results.redirect(results.FIGURES / "05_x.png") == results.FIGURES / "05_x.png"


def test_every_saved_figure_names_the_machine_once(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from parbp import envinfo, results

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    for _ in range(2):  # saving twice stamps once
        png, _ = results.save_figure(fig, pd.DataFrame({"x": [0, 1]}), tmp_path / "f.png")
    stamps = [t.get_text() for t in fig.texts]
    assert stamps == [f"measured on {envinfo.machine_label()}"]
    assert envinfo.cpu_name() in stamps[0] and png.stat().st_size > 0
    plt.close(fig)
