"""parbp.committed: which committed run a results section reads, and the README's headline written from them."""
import pandas as pd
import pytest

from parbp import committed
from parbp.results import FIGURES, ROOT, readme_block


def write(folder, name, **columns):
    pd.DataFrame(columns).to_csv(folder / name, index=False)


def test_the_paper_run_comes_before_the_full_one_and_a_file_without_profile_last(tmp_path):
    write(tmp_path, "x_full.csv", a=[1])
    assert committed.latest("x", tmp_path).profile == "full"
    write(tmp_path, "x_paper.csv", a=[1, 2])
    run = committed.latest("x", tmp_path)
    assert (run.profile, len(run.table), run.png) == ("paper", 2, None)
    write(tmp_path, "y.csv", env_cpu=["AMD EPYC"], env_gpu=[None])
    y = committed.latest("y.csv", tmp_path)
    assert y.profile is None and y.machine == "AMD EPYC" and "its committed run" in y.describe()


def test_a_missing_run_names_every_file_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="z_paper.csv, z_full.csv, z.csv"):
        committed.latest("z", tmp_path)


def test_the_readme_headline_is_the_one_written_from_the_committed_runs():
    readme = (ROOT / "README.md").read_text()
    assert readme_block(readme, "figures/headline.md").strip() == committed.headline().strip()
    assert (FIGURES / "headline.md").read_text().strip() == committed.headline().strip()


def test_every_headline_line_names_the_file_its_numbers_come_from():
    for line in committed.headline().splitlines():
        assert "`figures/" in line, line


def test_the_readme_cpu_table_is_the_one_written_from_bench_cpu():
    readme = (ROOT / "README.md").read_text()
    assert readme_block(readme, "figures/cpu_speed.md").strip() == committed.cpu_speed().strip()
    assert committed.cpu_speed().count("\n") >= 3  # a header, its rule and a row per batch and thread count
