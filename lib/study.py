"""Run the whole study: every numbered notebook, in order, with papermill.

    python -m parbp.study                    # the default profile (< 30 min on 2 cores)
    python -m parbp.study --profile paper    # the paper-scale experiments
    python -m parbp.study --only 05 06       # a few notebooks

Executed copies go to ``build/executed/`` (gitignored); the experiment notebooks write ``figures/``.
A profile maps notebook names to the papermill parameters that override the stored (quick) defaults,
or to a list of such dicts to run one notebook several times (05 runs once per network and dataset);
a notebook a profile does not name runs once with its stored defaults.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "build" / "executed"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def run(profile: str = "default", only: list[str] | None = None, out_dir: Path = EXECUTED) -> list[dict]:
    import papermill as pm

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    chosen = [nb for nb in notebooks() if not only or any(nb.name.startswith(o) for o in only)]
    if only and not chosen:
        raise ValueError(f"no notebook matches {only}; notebooks are {[nb.name for nb in notebooks()]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    times = []
    for nb in chosen:
        runs = PROFILES[profile].get(nb.name, {})
        runs = runs if isinstance(runs, list) else [runs]
        for i, params in enumerate(runs):
            out = out_dir / (nb.name if len(runs) == 1 else f"{nb.stem}_{i + 1}.ipynb")
            print(f"== {out.name} {params or '(stored defaults)'}", flush=True)
            start = time.perf_counter()
            pm.execute_notebook(str(nb), str(out), parameters=params, cwd=str(NOTEBOOKS),
                                progress_bar=False, log_output=False)
            times.append({"notebook": out.name, "profile": profile, "seconds": round(time.perf_counter() - start, 1)})
            print(f"   done in {times[-1]['seconds']} s", flush=True)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parbp.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", choices=list(PROFILES))
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 05 06")
    parser.add_argument("--out", type=Path, default=EXECUTED, help="where executed copies go")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    times = run(args.profile, args.only, args.out)
    import pandas as pd

    from .results import write_csv

    write_csv(pd.DataFrame(times), args.out / f"study_times_{args.profile}.csv")
    print(f"study ({args.profile}) finished in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
