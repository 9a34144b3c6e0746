"""The stored notebooks as a reader meets them: runnable from any directory, every parameter listed by
papermill, each experiment ending with the study's committed results, and no measured number typed by hand.

nbval (``make test``) replays every stored output; the results sections read only committed files and are never
tagged ``nbval-ignore-output``, so a stored finding that a committed CSV contradicts fails there. Running every
notebook from three working directories takes long; CI runs the cheapest one, ``PARBP_ALL_CWD=1`` runs all.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPERIMENTS = [nb for nb in NOTEBOOKS if "02" <= nb.name[:2] <= "09"]  # 00 data, 01 math, 10 the verdicts
RESULTS = "## The study's results"
IGNORE = "nbval-ignore-output"
ids = lambda nb: nb.name[:2]  # noqa: E731


def cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_no_path_depends_on_the_working_directory(nb):
    code = [source(c) for c in cells(nb) if c["cell_type"] == "code"]
    bad = [line.strip() for s in code for line in s.splitlines() if re.search(r"""["']\.\./|Path\(["'](figures|build)""", line)]
    assert not bad, f"{nb.name}: paths relative to the working directory (use parbp.results' ROOT/FIGURES): {bad}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_papermill_lists_every_parameter(nb):
    import papermill

    tagged = [c for c in cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        pytest.skip(f"{nb.name} takes no parameters")
    tree = ast.parse(source(tagged[0]))
    names = {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
             for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    hidden = names - set(papermill.inspect_notebook(str(nb)))
    assert not hidden, f"{nb.name}: papermill --help-notebook misses {sorted(hidden)} (a '=' in a comment hides one)"


@pytest.mark.parametrize("nb", EXPERIMENTS, ids=ids)
def test_an_experiment_ends_with_the_study_results(nb):
    cs = cells(nb)
    at = next((i for i, c in enumerate(cs) if c["cell_type"] == "markdown" and source(c).startswith(RESULTS)), None)
    assert at is not None, f"{nb.name} has no '{RESULTS}' section"
    code = [c for c in cs[at:] if c["cell_type"] == "code"]
    assert code and any("committed." in source(c) for c in code), f"{nb.name}: its results read no committed run"
    ignored = [source(c)[:60] for c in code if IGNORE in c.get("metadata", {}).get("tags", [])]
    assert not ignored, f"{nb.name}: results cells nbval does not compare: {ignored}"
    assert all(c.get("outputs") for c in code), f"{nb.name}: a results cell is stored without its output"


# a measured-looking number: digits with a unit of time, speed, size or ratio
MEASURED = re.compile(r"(?<![\w.^])\d[\d,]*(?:\.\d+)?\s?(?:×|x\b|%|s\b|ms\b|GFLOP/s|MiB|kB)")
# what a line may quote: the seeds and the papers, goals set before measuring, shapes, definitions
QUOTED = re.compile(r"seed|paper|Han et al|Deep Compression|goal|target|tolerance|at least|at most|≥|≤|≈|"
                    r"\d+\s?×\s?\d+|projection|e\.g\.|for example", re.I)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=ids)
def test_prose_quotes_no_measured_number(nb):
    typed = [line.strip() for c in cells(nb) if c["cell_type"] == "markdown"
             for line in source(c).splitlines() if MEASURED.search(line) and not QUOTED.search(line)]
    assert not typed, f"{nb.name}: numbers typed in prose (print them from the data instead): {typed}"


def papermill(nb: Path, cwd: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PARBP_FIGURES": str(out.parent / "figures")}
    return subprocess.run([sys.executable, "-m", "papermill", str(nb), str(out), "--cwd", str(cwd)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1800)


ANYWHERE = NOTEBOOKS if os.environ.get("PARBP_ALL_CWD") else [ROOT / "notebooks" / "10_against_the_seeds.ipynb"]


@pytest.mark.parametrize("where", ["root", "notebooks", "elsewhere"])
@pytest.mark.parametrize("nb", ANYWHERE, ids=ids)
def test_papermill_runs_from_any_directory(nb, where, tmp_path):
    cwd = {"root": ROOT, "notebooks": ROOT / "notebooks", "elsewhere": tmp_path / "elsewhere"}[where]
    cwd.mkdir(exist_ok=True)
    run = papermill(nb, cwd, tmp_path / "out.ipynb")
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list(cwd.glob("*.csv")) or where != "elsewhere", "a notebook wrote files into the working directory"
    shutil.rmtree(tmp_path / "figures", ignore_errors=True)
