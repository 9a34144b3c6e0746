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

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "build" / "executed"

_DEFAULT = {
    "02_serial.ipynb": dict(NET="2h", BATCHES=[1, 10, 100, 1000], REPEATS=5, TRAIN_NET="1h",
                            TRAIN_EXAMPLES=50_000, EPOCHS=5, BATCH_SIZE=50, LR=0.1),
    "03_threads.ipynb": dict(BATCHES=[10, 100, 1000], THREADS=[1, 2], REPEATS=5, HOGWILD_EXAMPLES=20_000,
                             HOGWILD_EPOCHS=5),
    "06_mpi_sgd.ipynb": dict(processes=[1, 2, 3, 4], subset=5000, epochs=5, bench_steps=10,
                             measure_nets=["1h", "2h"]),
    # Net-1h: with sigmoid + MSE, Net-2h at lr 0.1 sits on a plateau (10% accuracy) for several epochs,
    # which would make "epochs to reach the threshold" meaningless; Net-1h crosses 0.6 in about 3 epochs
    "07_data_vs_model_parallel.ipynb": dict(net="1h", subset=5000, epochs=5, batch_size=50,
                                            val_loss_threshold=0.6, sweep_batch=1000),
    "05_speedup.ipynb": [
        dict(net="1h", dataset="mnist", batch_sizes=[1, 10, 100, 1000], threads=[1, 2], n_steps=5, label="full"),
        dict(net="2h", dataset="mnist", batch_sizes=[10, 100, 1000], threads=[1, 2], n_steps=5, label="full"),
        dict(net="1h", dataset="kddcup99", batch_sizes=[10, 100, 1000], threads=[1, 2], n_steps=5, label="full"),
    ],
    # the paper's setting on all of MNIST: grid search on the validation split, then 45 epochs (>= 97.5%)
    "08_accuracy.ipynb": dict(train_examples=50_000, grid_examples=50_000, lrs=[0.03, 0.1, 0.2], grid_epochs=1,
                              batch_size=10, epochs=45, expect_test_acc=0.975),
}

_PAPER = {
    **_DEFAULT,
    "02_serial.ipynb": dict(_DEFAULT["02_serial.ipynb"], REPEATS=7, EPOCHS=20),
    "03_threads.ipynb": dict(_DEFAULT["03_threads.ipynb"], REPEATS=7, HOGWILD_EXAMPLES=50_000, HOGWILD_EPOCHS=10),
    "06_mpi_sgd.ipynb": dict(_DEFAULT["06_mpi_sgd.ipynb"], subset=None, bench_steps=20),
    "07_data_vs_model_parallel.ipynb": dict(_DEFAULT["07_data_vs_model_parallel.ipynb"], subset=None, epochs=5),
    "05_speedup.ipynb": [
        dict(run, batch_sizes=[1, 10, 100, 1000, 10_000] if run["net"] == "1h" else [10, 100, 1000, 10_000],
             n_steps=7, label="paper")
        for run in _DEFAULT["05_speedup.ipynb"]
    ],
    "08_accuracy.ipynb": dict(_DEFAULT["08_accuracy.ipynb"], lrs=[0.01, 0.03, 0.1, 0.2], grid_epochs=2, epochs=60),
}

PROFILES: dict[str, dict[str, dict | list[dict]]] = {"default": _DEFAULT, "paper": _PAPER}


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
