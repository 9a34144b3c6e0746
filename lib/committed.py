"""The study's committed results, as the notebooks' results sections read them.

``make study`` runs every notebook at a profile (``parbp.profiles``) and commits what it measured under
figures/ as ``<stem>_<profile>.csv`` and ``.png``; a few experiments write one file with no profile in its name.
A results section never quotes the quick run above it: it asks this module for the most complete run that is
committed (the paper profile, then the full one), shows its figure and table, and writes its findings from those
numbers, so a rerun of the study rewrites them and nbval catches a stored sentence that contradicts a CSV.

    run = committed.latest("05_speedup_batch_1h_mnist")     # the paper run if committed, else the full one
    run.table, run.profile, run.png, run.machine             # its data, which profile, its figure, where measured
    committed.show(run)                                      # the figure, and a line naming the run
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .results import FIGURES

PROFILES = ("paper", "full")  # most complete first


@dataclass(frozen=True)
class Run:
    """One committed result: a CSV, the figure drawn from it (if any) and the profile that measured it."""

    stem: str
    profile: str | None  # None: the experiment writes one file, whatever the profile
    csv: Path
    table: pd.DataFrame

    @property
    def png(self) -> Path | None:
        png = self.csv.with_suffix(".png")
        return png if png.exists() else None

    @property
    def machine(self) -> str:
        """Where it was measured: the CPU (and GPU) named in its rows, or "unrecorded"."""
        names = [", ".join(self.table[c].dropna().astype(str).unique()) for c in ("env_cpu", "env_gpu", "machine")
                 if c in self.table and self.table[c].notna().any()]
        return "; ".join(n for n in names if n and n != "nan") or "unrecorded"

    def describe(self) -> str:
        name = self.csv.relative_to(self.csv.parents[1]).as_posix()
        run = f"the {self.profile} profile's run" if self.profile else "its committed run"
        return f"{name}: {run}, {len(self.table)} rows, measured on {self.machine}"


def candidates(stem: str, folder: Path = FIGURES) -> list[Path]:
    """The files that could hold ``stem``'s results, most complete first."""
    if stem.endswith(".csv"):
        return [folder / stem]
    return [folder / f"{stem}_{p}.csv" for p in PROFILES] + [folder / f"{stem}.csv"]


def latest(stem: str, folder: Path = FIGURES) -> Run:
    """The most complete committed run of ``stem`` (a figure's name without its profile, or a file name)."""
    tried = candidates(stem, folder)
    for csv in tried:
        if csv.exists():
            profile = next((p for p in PROFILES if csv.stem == f"{stem}_{p}"), None)
            return Run(stem, profile, csv, pd.read_csv(csv))
    raise FileNotFoundError(f"no committed results for {stem!r}: none of {', '.join(p.name for p in tried)} is in "
                            f"{folder} (make study PROFILE=full writes them)")


def show(run: Run) -> None:
    """Display the run's figure, under a line that names the file, the profile and the machine."""
    from IPython.display import Image, display

    print(run.describe())
    if run.png is not None:
        display(Image(filename=str(run.png)))
