"""Run the whole study: every numbered notebook, in order, with papermill; rerun only what changed.

    python -m parbp.study                    # the default profile (figures/study_times_default.csv)
    python -m parbp.study --profile paper    # the paper-scale experiments
    python -m parbp.study --only 05 06       # a few notebooks
    python -m parbp.study --force            # rerun everything (make study FORCE=1)
    python -m parbp.study --publish          # also figures/study_times_PROFILE.csv and the README's table

Executed copies go to ``build/executed/``; the notebooks write ``figures/``; a profile (``parbp.profiles``)
sets their papermill parameters.

**Reruns.** ``NAME.record.json`` beside each executed copy hashes what produced it (``record_key``); a
matching record skips the run, and a failed or interrupted run has none, so it runs again. A notebook with a
``checkpoint_dir`` parameter (08) checkpoints under ``build/checkpoints/``, so an interrupted study resumes
its training. **Times** go to ``build/executed/study_times_PROFILE.csv`` (with ``--publish``, also to
``figures/`` and the README). **Failures** are reported by notebook, cell and error; the others still run;
the exit status is 1.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from .cli import Parser, check_choice, run as run_cli
from .envinfo import load as machine_load, machine_label
from .profiles import PROFILES
from .results import BUILD, FIGURES, NOTEBOOKS, ROOT, sync_readme_block, write_csv, write_text

EXECUTED = BUILD / "executed"
CHECKPOINTS = BUILD / "checkpoints"
LIB = Path(__file__).resolve().parent


def notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` in ``folder``, in order."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def _sha(obj) -> str:
    data = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()


def _code_cells(path: Path) -> list[tuple[str, str]]:
    """(type, source) of every cell: what a notebook runs, not its outputs."""
    return [(c["cell_type"], "".join(c["source"])) for c in json.loads(Path(path).read_text())["cells"]]


def imported(source: str, by_name: bool = True) -> set[str] | None:
    """The parbp modules ``source`` imports, at the top or inside a function (``from . import x``,
    ``from .x import y``, ``from parbp.x import y``, ``import parbp.x``) and, ``by_name``, loads by name (a
    string ``"parbp.x"`` or ``"parbp.x:Class"``: the trainer registry, a ``-m parbp.x`` argument) or runs from a
    shell line (``!python -m parbp.x``); None when it does not parse."""
    shell = [line for line in source.splitlines() if line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(line for line in source.splitlines() if line not in shell))
    except SyntaxError:
        return None
    found = set(re.findall(r"-m parbp\.(\w+)", "\n".join(shell))) if by_name else set()
    for node in ast.walk(tree):
        if by_name and isinstance(node, ast.Constant) and isinstance(node.value, str):
            found |= set(re.findall(r"^parbp\.(\w+)(?::\w+)?$", node.value))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "parbp" or (node.module or "").startswith("parbp."):
                module = (node.module or "").removeprefix("parbp").lstrip(".")
                found |= {module.split(".")[0]} if module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("parbp.")}
    return found


def notebook_modules(folder: Path = NOTEBOOKS) -> list[Path]:
    """The parbp modules the notebooks can run: those their code cells import and, in turn, what those import
    (every module when a cell does not parse)."""
    every = {p.stem: p for p in LIB.glob("*.py")}
    todo = {"__init__"}.union(*(set(every) if (found := imported(source)) is None else found
                                for nb in notebooks(folder) for kind, source in _code_cells(nb) if kind == "code"))
    seen = set()
    while todo := (todo & every.keys()) - seen:  # breadth first: the modules found last, not seen before
        seen |= todo
        todo = set().union(*(imported(every[m].read_text()) or set() for m in todo))
    return sorted(every[m] for m in seen)


def input_files(nb: Path, params: dict) -> dict:
    """Hashes of the files a run reads that an earlier run made: string parameters naming an existing file
    (09's ``model_path``, notebook 08's trained network), so a rerun of 08 makes 09 stale too."""
    return {value: _sha((nb.parent / value).read_bytes()) for value in params.values()
            if isinstance(value, str) and value and (nb.parent / value).is_file()}


def record_key(nb: Path, params: dict, profile: str, parbp: str) -> dict:
    """What a run's record must match for the run to be skipped: code, parameters, profile, library, inputs."""
    return {"notebook": _sha(_code_cells(nb)), "parameters": json.loads(json.dumps(params, default=str)),
            "profile": profile, "parbp": parbp, "inputs": input_files(nb, params)}


class NotebookFailed(RuntimeError):
    """One notebook run failed; the message names the notebook, the cell and the error."""


def describe_failure(out: Path, error: Exception) -> str:
    """One line (and where the traceback is): the notebook, the cell and the error."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        first = next((line for line in error.source.splitlines() if line.strip()), "")
        return (f"{out.name} failed in cell {error.cell_index} (In [{error.exec_count}]: {first.strip()[:80]}): "
                f"{error.ename}: {error.evalue}\n   the executed copy with the full traceback: {out}")
    return f"{out.name} failed: {type(error).__name__}: {error}"


def run(profile: str = "default", only: list[str] | None = None, out_dir: Path = EXECUTED, force: bool = False,
        notebooks_dir: Path = NOTEBOOKS, checkpoints: Path = CHECKPOINTS, log=None) -> list[dict]:
    """Run (or skip) every chosen notebook run: one row per run with its status and seconds. Raises
    NotebookFailed, after running everything else, if any notebook failed."""
    log = log or (lambda message: print(message, flush=True))
    check_choice("profile", profile, PROFILES, unknown=True)
    every = notebooks(notebooks_dir)
    chosen = [nb for nb in every if not only or any(nb.name.startswith(o) for o in only)]
    if only and not chosen:
        raise ValueError(f"no notebook matches {only}; notebooks are {[nb.name for nb in every]}")
    out_dir, checkpoints = Path(out_dir), Path(checkpoints)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the parbp source the notebooks can import (editing a module none of them reaches changes nothing)
    parbp = _sha(b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in notebook_modules(notebooks_dir)))
    rows, failures = [], []
    for nb in chosen:
        runs = PROFILES[profile].get(nb.name, {})
        runs = runs if isinstance(runs, list) else [runs]
        for i, params in enumerate(runs):
            out = out_dir / (nb.name if len(runs) == 1 else f"{nb.stem}_{i + 1}.ipynb")
            rows.append({"notebook": out.name, "profile": profile, "ran": describe(params),
                         **_run_one(nb, out, params, record_key(nb, params, profile, parbp), force, notebooks_dir,
                                    checkpoints / out.stem, failures, log)})
    if failures:
        raise NotebookFailed(f"{len(failures)} notebook run(s) failed:\n  " + "\n  ".join(failures))
    return rows


def _run_one(nb, out, params, key, force, notebooks_dir, ckpt_dir, failures, log) -> dict:
    """Run one parameterization of ``nb`` into ``out`` unless its record says it is done and unchanged:
    the row's status, seconds and load; a failure is appended to ``failures``, not raised."""
    import papermill as pm

    record = out.with_suffix(".record.json")
    try:
        previous = json.loads(record.read_text())
    except (OSError, ValueError):
        previous = {}
    if not force and previous.get("key") == key and out.is_file():
        log(f"== {out.name} skipped: done and unchanged since {previous.get('finished', '?')}")
        return {"status": "skipped", "seconds": previous.get("seconds")}
    record.unlink(missing_ok=True)  # from here on, this run is not done until it succeeds
    if force:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    log(f"== {out.name} {params or '(stored defaults)'}")
    if "checkpoint_dir" in pm.inspect_notebook(str(nb)):
        params = {**params, "checkpoint_dir": str(ckpt_dir / _sha(key)[:16])}
    load = round(machine_load(), 2)  # the machine is shared: say how busy it was
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(nb), str(out), parameters=params, cwd=str(notebooks_dir),
                            progress_bar=False, log_output=False)
    except Exception as e:  # a failing notebook must not stop the others
        failures.append(describe_failure(out, e))
        log(f"   FAILED: {failures[-1]}")
        return {"load_before": load, "status": "failed", "seconds": round(time.perf_counter() - start, 1)}
    seconds = round(time.perf_counter() - start, 1)
    write_text(json.dumps({"key": key, "seconds": seconds,
                           "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, indent=1), record)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log(f"   done in {seconds} s")
    return {"load_before": load, "status": "ran", "seconds": seconds}


#: the parameters that say what a run was, in the README's table (the executed copy has them all)
DESCRIBED = ("net", "dataset", "batch_sizes", "subset", "train_examples", "epochs", "batch_size", "processes",
             "micro_batches", "label")


def describe(params: dict) -> str:
    """A short account of a run's parameters (the ones in ``DESCRIBED``), e.g. ``net 2h, epochs 5``."""
    if not params:
        return "stored defaults"
    by_name = {k.lower(): v for k, v in params.items()}  # 02 and 03 name theirs in capitals
    shown = [f"{k.replace('_', ' ')} {'all' if by_name[k] is None else by_name[k]}" for k in DESCRIBED if k in by_name]
    return ", ".join(shown).replace("'", "") or f"{len(params)} profile parameter(s), in the executed copy"


def times_table(rows: list[dict], total_s: float, machine: str):
    """The runs' times as a DataFrame with the machine on every row and a last row for the whole study."""
    total = {"notebook": "(whole study)", "profile": rows[0]["profile"] if rows else "", "status": "",
             "seconds": round(total_s, 1), "ran": f"{sum(r['status'] == 'ran' for r in rows)} run(s)"}
    return pd.concat([pd.DataFrame(rows), pd.DataFrame([total])], ignore_index=True).assign(machine=machine)


def times_markdown(df) -> str:
    """The README's table: notebook, what it ran, minutes, load; and the total with the machine."""
    lines = ["| run | what it ran | status | minutes | load when it started |", "|---|---|---|---|---|"]
    for r in df.iloc[:-1].itertuples():
        load = "" if pd.isna(getattr(r, "load_before", None)) else f"{r.load_before:.1f}"  # skipped runs: none
        lines.append(f"| `{r.notebook}` | {r.ran} | {r.status} | {r.seconds / 60:.1f} | {load} |")
    total = df.iloc[-1]
    lines += ["", f"Whole study: **{total.seconds / 60:.1f} min** ({total.ran}) on {total.machine}."]
    return "\n".join(lines) + "\n"


def publish_times(df, profile: str, figures: Path | None = None, readme: Path = ROOT / "README.md") -> Path:
    """``figures/study_times_PROFILE.csv``, and its table copied into the README where it has the markers."""
    csv = write_csv(df, Path(figures or FIGURES) / f"study_times_{profile}.csv")
    if readme.is_file():
        sync_readme_block(readme, f"figures/study_times_{profile}.csv", times_markdown(df), missing_ok=True)
    return csv


def main(argv=None) -> int:
    """``python -m parbp.study``: run the study, write its times and say how it went."""
    parser = Parser(prog="python -m parbp.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", choices=list(PROFILES))
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 05 06")
    parser.add_argument("--force", action="store_true", help="rerun every notebook, done or not")
    parser.add_argument("--out", type=Path, default=EXECUTED, help="where executed copies and their records go")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="the folder of numbered notebooks to run")
    parser.add_argument("--checkpoints", type=Path, default=CHECKPOINTS,
                        help="where notebooks that take a checkpoint_dir keep their checkpoints")
    parser.add_argument("--publish", action="store_true",
                        help="also write figures/study_times_PROFILE.csv and copy its table into the README")
    args = parser.parse_args(argv)
    if not args.notebooks.is_dir():
        parser.error(f"--notebooks {args.notebooks} is not a folder")
    if args.publish and args.only:
        parser.error("--publish times the whole study, so it cannot be combined with --only")
    start = time.perf_counter()
    try:
        rows = run(args.profile, args.only, args.out, args.force, args.notebooks, args.checkpoints)
    except NotebookFailed as e:
        print(f"study ({args.profile}) finished in {time.perf_counter() - start:.0f} s; {e}", file=sys.stderr)
        return 1
    times = times_table(rows, time.perf_counter() - start, machine_label())
    write_csv(times, args.out / f"study_times_{args.profile}.csv")
    if args.publish:
        print(f"times: {publish_times(times, args.profile)}")
    ran = sum(r["status"] == "ran" for r in rows)
    print(f"study ({args.profile}) finished in {time.perf_counter() - start:.0f} s: {ran} run(s), "
          f"{len(rows) - ran} skipped as done and unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m parbp.study"))
