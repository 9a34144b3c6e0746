"""pytest at the repository root: plain ``pytest --nbval`` runs exactly what ``make test`` runs.

``testpaths`` (pyproject.toml) names notebooks/ and tests/; this file supplies the rest of the setup that
used to live only in the Makefile, so a user's own CI command needs no flags beyond ``--nbval``:
  * nbval's output sanitizer (tests/nbval_sanitize.cfg), unless one is given on the command line;
  * PARBP_FIGURES -> build/test-figures, unless set: the notebooks executed by nbval write their figures
    there, never over the committed full-profile results in figures/.
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("PARBP_FIGURES", str(ROOT / "build" / "test-figures"))


def pytest_configure(config):
    if getattr(config.option, "nbval_sanitize_with", "no nbval") is None:
        config.option.nbval_sanitize_with = str(ROOT / "tests" / "nbval_sanitize.cfg")
