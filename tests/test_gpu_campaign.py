"""The GPU campaign's dry run: the one command the GPU machine will run, here on numba's CUDA simulator at
tiny sizes, so that the campaign cannot rot between the rare quarter hours a GPU is lent; and the size of
what travels there."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from parbp import gpu_campaign

ROOT = Path(__file__).resolve().parent.parent


def test_the_dry_run_installs_parbp_from_the_tree_and_writes_every_file(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(["bash", "gpu/campaign.sh", str(out), "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert {"machine.json", "tests.log", "kernels.csv", "bench_gpu.csv", "campaign.log", "install.log"} <= \
        {p.name for p in out.iterdir()}
    log = (out / "campaign.log").read_text()
    assert "DRY RUN" in log and "all steps passed" in log and "== travel: passed: tree " in log  # the trip weighed
    machine = json.loads((out / "machine.json").read_text())
    assert machine["numba_cuda_simulator"] and not machine["parbp_from"].startswith(str(ROOT / "lib"))  # installed
    assert " passed" in (out / "tests.log").read_text()
    kernels = pd.read_csv(out / "kernels.csv")
    assert set(kernels.kernel.str[0]) == set("12345") and (kernels.relative <= gpu_campaign.DRY.kernel_tol).all()
    bench = pd.read_csv(out / "bench_gpu.csv")
    # the GPU trainers (the simulator stands in for numba-cuda) and the paper's baseline, of one run, one machine
    assert set(bench[bench.device == "gpu"].impl) == {"numba-cuda"}
    assert {"serial-example", *gpu_campaign.DRY.cpu_impls} <= set(bench[bench.device == "cpu"].impl)
    assert bench.env_cpu.nunique() == 1 and (bench.ms_per_step > 0).all()


def test_what_travels_is_measured_and_refused_above_the_limit(tmp_path, monkeypatch, capsys):
    sizes = gpu_campaign.travel_bytes(root=ROOT)
    assert 0 < sizes["tree"] < gpu_campaign.TRAVEL_LIMIT
    monkeypatch.chdir(ROOT)
    assert gpu_campaign.main(["--measure"]) == 0 and "MiB of 64 MiB" in capsys.readouterr().out
    monkeypatch.setattr(gpu_campaign, "TRAVEL_LIMIT", sizes["tree"] - 1)
    assert gpu_campaign.main(["--measure"]) == 1 and "too large" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="make gpu-payload"):
        gpu_campaign.travel_bytes(["no/such/payload"], root=ROOT)


def test_the_campaign_refuses_to_run_outside_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="repository root"):
        gpu_campaign.campaign(tmp_path / "out", dry_run=True)


def test_the_readme_says_how_to_run_it_and_make_builds_the_payload():
    readme, makefile = (ROOT / "README.md").read_text(), (ROOT / "Makefile").read_text()
    assert "## Running the GPU campaign" in readme and "make gpu-payload" in readme and "bash gpu/campaign.sh OUT" in readme
    assert "\ngpu-payload: install\n\t$(BIN)/python -m parbp.gpu_campaign --payload $(PAYLOAD)" in makefile
