"""`make lab`: JupyterLab in a real (headless) browser runs a notebook with no error, progress bars as widgets.

The server runs on loopback with a token and a free port, on a copy of the notebooks (so nothing in the
repository is executed in place or autosaved); the page is driven through JupyterLab's own command registry
(``expose_app_in_browser``), the way JupyterLab's Galata tests do. Every wait is bounded.
"""
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from browser import chromium, find_browser

ROOT = Path(__file__).resolve().parent.parent
STARTUP_S, RUN_S = 90, 180

PROGRESS_NB = nbformat.v4.new_notebook(cells=[
    nbformat.v4.new_code_cell("from tqdm.auto import tqdm\n\nfor _ in tqdm(range(50), desc='steps'):\n    pass"),
    nbformat.v4.new_code_cell("from parbp import nets\nnets.n_params(nets.layer_sizes('1h', 784, 10))"),
], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    find_browser()
    root = tmp_path_factory.mktemp("lab")
    (root / "notebooks").mkdir()
    (root / "figures").mkdir()  # the notebooks write ../figures: here that is this folder, not the repository's
    shutil.copy(ROOT / "notebooks" / "01_backprop_math.ipynb", root / "notebooks")
    nbformat.write(PROGRESS_NB, root / "notebooks" / "progress.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "PARBP_FIGURES": str(root / "figures"), "JUPYTER_CONFIG_DIR": str(root / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root / 'notebooks'}",
           "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    log = open(root / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start in {STARTUP_S} s:\n{(root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


PANEL = """const name = arguments[0];
const panel = window.jupyterapp && Array.from(jupyterapp.shell.widgets('main'))
  .find(w => w.context && w.context.path === name);"""
READY = PANEL + """
return !!(panel && panel.context.isReady && panel.sessionContext.session && panel.sessionContext.session.kernel
          && panel.sessionContext.session.kernel.status === 'idle');"""
FOCUSED = PANEL + "return !!panel && jupyterapp.shell.currentWidget === panel;"
RUN_ALL = """const done = arguments[arguments.length - 1];
jupyterapp.commands.execute('notebook:run-all-cells').then(() => done('ok'), e => done('failed: ' + e));"""
STATE = PANEL + """
const cells = panel.content.model.toJSON().cells.filter(c => c.cell_type === 'code');
return {status: panel.sessionContext.session.kernel.status, cells: cells.length,
        executed: cells.filter(c => c.execution_count !== null).length,
        outputs: cells.map(c => c.outputs)};"""


def run_in_lab(driver, base, token, name):
    """Open ``name``, click into it (headless Chromium gives focus only on a real click), Run > Run All Cells."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/lab/tree/{name}?token={token}")
    WebDriverWait(driver, STARTUP_S).until(lambda d: d.execute_script(READY, name), f"{name}: kernel not ready")
    panel_id = driver.execute_script(PANEL + "return panel.id;", name)
    driver.find_element(By.CSS_SELECTOR, f"[id='{panel_id}'] .jp-Cell .jp-InputPrompt").click()
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(FOCUSED, name), f"{name}: did not take the focus")
    assert driver.execute_async_script(RUN_ALL) == "ok"
    WebDriverWait(driver, RUN_S).until(
        lambda d: (lambda s: s["status"] == "idle" and s["executed"] == s["cells"])(d.execute_script(STATE, name)),
        f"{name}: cells did not finish in {RUN_S} s")
    return driver.execute_script(STATE, name)


def errors(state) -> list:
    return [o for outs in state["outputs"] for o in outs
            if o["output_type"] == "error" or (o["output_type"] == "stream" and o.get("name") == "stderr"
                                               and ("Error" in "".join(o["text"]) or "IProgress" in "".join(o["text"])))]


def test_a_notebook_runs_in_jupyterlab_and_progress_bars_are_widgets(lab):
    base, token = lab
    with chromium(page_load_timeout=STARTUP_S) as driver:
        driver.set_script_timeout(RUN_S)
        state = run_in_lab(driver, base, token, "progress.ipynb")
        assert not errors(state), errors(state)
        # tqdm.auto found ipywidgets: the progress bar is a widget view, rendered as one on the page
        mimes = {m for outs in state["outputs"] for o in outs for m in o.get("data", {})}
        assert "application/vnd.jupyter.widget-view+json" in mimes, state["outputs"]
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "return document.querySelectorAll('.jp-OutputArea-output .widget-progress, "
            ".jp-OutputArea-output progress, .jp-OutputArea-output .jupyter-widgets').length > 0"),
            "the progress bar widget did not render")
        assert "IProgress not found" not in driver.page_source

        state = run_in_lab(driver, base, token, "01_backprop_math.ipynb")
        assert state["cells"] > 3 and not errors(state), errors(state)
