"""The study runner on a folder of tiny notebooks, as real processes: interrupted with SIGKILL during a
notebook's training and rerun, it skips what finished, resumes the training from its checkpoint, and
ends with the CSVs of an uninterrupted run; a failing notebook is reported by notebook, cell and error."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest

from parbp import checkpoint
from parbp import study as runner
from parbp.checkpoint import CheckpointError

TESTS = os.path.dirname(__file__)

FAST = """
import pandas as pd
from parbp import results
results.write_csv(pd.DataFrame({"x": [1, 2, 3], "seconds": [0.1, 0.2, 0.3]}), results.FIGURES / "01_fast.csv")
"""

TRAIN = """
import sys
import time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_train import toy
from parbp import results, train, trainers
ds = toy(n=6000, n_in=64)
ckpt = Path(checkpoint_dir) / "fit.npz" if checkpoint_dir else None
with trainers.make("numpy", net=[128], n_in=ds.n_in, n_out=ds.n_out, seed=0) as t:
    step = t.step
    def paced_step(*args):  # >= 0.5 s an epoch on any machine, so the test can kill the study mid-training
        time.sleep(0.0005)
        return step(*args)
    t.step = paced_step
    history = train.fit(t, ds, epochs=epochs, batch_size=5, lr=0.5, seed=1, progress=False, checkpoint=ckpt, resume=True)
results.write_csv(history, results.FIGURES / "02_train.csv")
"""


def make_notebook(path: Path, code: str, parameters: str = ""):
    cells = []
    if parameters:
        cells.append(nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    cells.append(nbformat.v4.new_code_cell(code))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def study(root: Path, *extra):
    """``python -m parbp.study`` on ``root``/nb, writing under ``root`` only."""
    env = {**os.environ, "PARBP_FIGURES": str(root / "figures")}
    cmd = [sys.executable, "-m", "parbp.study", "--notebooks", str(root / "nb"), "--out", str(root / "executed"),
           "--checkpoints", str(root / "checkpoints"), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def fresh(root: Path, epochs=12) -> Path:
    (root / "nb").mkdir(parents=True)
    make_notebook(root / "nb" / "01_fast.ipynb", FAST)
    make_notebook(root / "nb" / "02_train.ipynb", TRAIN.format(tests=TESTS),
                  f"epochs = {epochs}\ncheckpoint_dir = None")
    return root


def csvs(root: Path) -> dict:
    return {p.name: pd.read_csv(p).drop(columns="seconds") for p in sorted((root / "figures").glob("*.csv"))}


def checkpoint_epoch(root: Path) -> int:
    for p in (root / "checkpoints").glob("*/*/fit.npz"):
        try:
            return checkpoint.load(p)[1]["epoch"]
        except (FileNotFoundError, CheckpointError):
            pass
    return 0


def test_interrupted_study_resumes_and_skips_what_finished(tmp_path):
    ref = fresh(tmp_path / "ref")
    rc, log = finish(study(ref))
    assert rc == 0, log
    assert "2 run(s), 0 skipped" in log

    run = fresh(tmp_path / "run")
    proc = study(run)
    deadline = time.monotonic() + 240
    while checkpoint_epoch(run) < 2:  # killed inside 02's training, after its second epoch
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # the runner and its kernel at once, as a closed laptop would (the kernel runs in a session of its own,
    # so killing the runner's process group would leave it training until it noticed its parent was gone)
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        p.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 2 <= checkpoint_epoch(run) < 12
    assert not (run / "executed" / "02_train.record.json").exists()

    rc, log = finish(study(run))
    assert rc == 0, log
    assert "01_fast.ipynb skipped: done and unchanged" in log and "== 02_train.ipynb" in log
    assert "1 run(s), 1 skipped" in log
    got, want = csvs(run), csvs(ref)
    assert list(got) == list(want) == ["01_fast.csv", "02_train.csv"]
    for name in want:  # the same numbers to the last digit, timing columns aside
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
    assert not list((run / "checkpoints").glob("*/*/fit.npz"))  # cleaned up once the run succeeded

    rc, log = finish(study(run))
    assert rc == 0 and "0 run(s), 2 skipped" in log

    # a changed notebook reruns, the other is still skipped; --force reruns everything
    make_notebook(run / "nb" / "01_fast.ipynb", FAST + "\n# changed\n")
    rc, log = finish(study(run, "--only", "01"))
    assert rc == 0 and "1 run(s), 0 skipped" in log
    rc, log = finish(study(run, "--only", "01", "--force"))
    assert rc == 0 and "1 run(s), 0 skipped" in log


def test_a_failing_notebook_is_reported_by_cell_and_error_and_rerun(tmp_path):
    (tmp_path / "nb").mkdir()
    make_notebook(tmp_path / "nb" / "01_fails.ipynb", "x = 1\nraise ValueError('the data are missing')")
    rc, log = finish(study(tmp_path))
    assert rc == 1
    assert "01_fails.ipynb failed in cell 0" in log and "ValueError: the data are missing" in log
    assert "Traceback" not in log and "PapermillExecutionError" not in log
    # never recorded as done, so the next study runs it again (the executed copy keeps the traceback)
    assert not (tmp_path / "executed" / "01_fails.record.json").exists()
    assert "ValueError" in (tmp_path / "executed" / "01_fails.ipynb").read_text()


def test_bad_arguments_get_one_line(tmp_path):
    rc, log = finish(study(tmp_path, "--profile", "nope"))
    assert rc == 2 and log.count("\n") == 1 and "invalid choice: 'nope'" in log
    (tmp_path / "nb").mkdir()
    rc, log = finish(study(tmp_path, "--only", "42"))
    assert rc == 2 and "error: no notebook matches ['42']" in log and "Traceback" not in log


def test_a_run_is_stale_when_a_file_it_reads_changes(tmp_path):
    """09 reads the network 08 trained (``model_path``): retraining it must make 09's record differ."""
    from parbp import study

    nb = tmp_path / "09_reader.ipynb"
    make_notebook(nb, "print(model_path)", "model_path = None")
    model = tmp_path / "model.npz"
    model.write_bytes(b"first network")
    params = {"model_path": "model.npz", "label": "full"}
    before = study.record_key(nb, params, "default", "src")
    assert before == study.record_key(nb, params, "default", "src")
    model.write_bytes(b"retrained network")
    assert study.record_key(nb, params, "default", "src") != before
    # a parameter that names no file does not count
    assert study.input_files(nb, {"label": "full", "net": "1h"}) == {}


def test_published_times_name_the_machine_and_fill_the_readme(tmp_path):
    from parbp import results, study

    rows = [{"notebook": "05_speedup_1.ipynb", "profile": "paper", "status": "ran", "seconds": 90.0,
             "ran": study.describe({"net": "1h", "batch_sizes": [10, 100], "subset": None, "n_steps": 7}),
             "load_before": 0.5},
            {"notebook": "06_mpi_sgd.ipynb", "profile": "paper", "status": "skipped", "seconds": 30.0,
             "ran": study.describe({})}]
    df = study.times_table(rows, 125.0, "a test CPU")
    assert rows[0]["ran"] == "net 1h, batch sizes [10, 100], subset all"  # n_steps is not in the account
    assert study.describe({"NET": "2h", "EPOCHS": 5, "REPEATS": 5}) == "net 2h, epochs 5"
    assert study.describe({"REPEATS": 5}) == "1 profile parameter(s), in the executed copy"
    assert list(df.notebook) == ["05_speedup_1.ipynb", "06_mpi_sgd.ipynb", "(whole study)"]
    assert set(df.machine) == {"a test CPU"} and df.seconds.iloc[-1] == 125.0 and df.ran.iloc[-1] == "1 run(s)"
    readme = tmp_path / "README.md"
    begin, end = results.readme_markers("figures/study_times_paper.csv")
    readme.write_text(f"# x\n{begin}\nold\n{end}\nafter\n")
    csv = study.publish_times(df, "paper", figures=tmp_path, readme=readme)
    assert csv == tmp_path / "study_times_paper.csv" and len(csv.read_text().splitlines()) == 4
    block = results.readme_block(readme.read_text(), "figures/study_times_paper.csv")
    assert "| `05_speedup_1.ipynb` | net 1h, batch sizes [10, 100], subset all | ran | 1.5 | 0.5 |" in block
    assert "| `06_mpi_sgd.ipynb` | stored defaults | skipped | 0.5 |  |" in block
    assert block.endswith("Whole study: **2.1 min** (1 run(s)) on a test CPU.")
    # a README without the markers is left alone; asked for by name, their absence is an error naming them
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# nothing to fill\n")
    study.publish_times(df, "paper", figures=tmp_path, readme=plain)
    assert plain.read_text() == "# nothing to fill\n"
    with pytest.raises(ValueError, match="no <!-- BEGIN figures/x.csv --> ... <!-- END figures/x.csv --> markers"):
        results.sync_readme_block(plain, "figures/x.csv", "text")


def test_publish_refuses_a_partial_study(tmp_path):
    rc, log = finish(study(fresh(tmp_path), "--only", "01", "--publish"))
    assert rc == 2 and "--publish times the whole study" in log


def _notebook(path: Path, *sources: str) -> Path:
    cells = [{"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None} for s in sources]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_only_the_modules_the_notebooks_can_reach_count(tmp_path):
    _notebook(tmp_path / "01_x.ipynb", "%matplotlib inline\nfrom parbp import train\n", "!python -m parbp.seed004 --help")
    reached = {p.stem for p in runner.notebook_modules(tmp_path)}
    # train and what it imports, the registry's trainers by their "parbp.x:Class" strings, a shell line's module
    assert {"__init__", "train", "trainers", "cpu", "baselines", "seed004"} <= reached
    assert not reached & {"book", "study", "profiles"}  # nothing a notebook runs imports them


def test_a_cell_that_does_not_parse_counts_every_module(tmp_path):
    _notebook(tmp_path / "01_x.ipynb", "def broken(:\n")
    assert {p.stem for p in runner.notebook_modules(tmp_path)} >= {"book", "study"}
