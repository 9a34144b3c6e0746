"""The GPU campaign: everything this study measures on a CUDA GPU, in one command, within eight minutes.

    bash gpu/campaign.sh OUT                    on the GPU machine: installs parbp from the tree, then runs
    python -m parbp.gpu_campaign --out OUT      this (add --dry-run for the rehearsal on numba's simulator)
    python -m parbp.gpu_campaign --payload build/gpu-payload    (make gpu-payload) builds what travels beside
                                                                the tree, then measures the trip: > 64 MiB fails

The GPU is lent for a quarter of an hour with no network: one command needing only the tree and the payload,
each step in its own process under its own limit inside ``LIMIT_S`` (a hung step costs its share, not the
rerun). Into OUT it writes

  machine.json    the machine (``parbp.envinfo.summary``, nvidia-smi) and where parbp was imported from
  tests.log       tests/test_cuda.py and tests/test_cupy.py, on the GPU (the simulator off)
  kernels.csv     each of the five kernels alone against numpy (``parbp.cuda.check_kernels``), at MNIST width
                  with real MNIST images as the input activations when the payload brought them
  bench_gpu.csv   ``parbp.bench`` on the GPU (numba-cuda, cupy, torch) for Net-1h and Net-2h at batch 100 to
                  10,000; then, in the same run on the same machine's CPU, the paper's baseline (serial-example,
                  the per-example loop) and the best CPU trainers at every core: speedups never mix machines
  campaign.log    each step's output, time and exit status, and the summary (install.log: gpu/campaign.sh's pip)

``--dry-run`` runs the same steps on numba's CUDA simulator at tiny sizes (tests/test_gpu_campaign.py, in CI).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LIMIT_S = 440  # the whole campaign, install excluded (~20 s): under 8 min, so a rerun fits the quarter hour
TRAVEL_LIMIT = 64 * 2**20  # the tree plus what is carried, per trip
PAYLOAD = os.environ.get("PARBP_PAYLOAD", "build/gpu-payload")  # what travels beside the tree (make gpu-payload)
TESTS = ["tests/test_cuda.py", "tests/test_cupy.py"]


@dataclass
class Plan:
    """The sizes of one campaign: the real one, or the dry run's tiny copy of it."""

    nets: list = field(default_factory=lambda: ["1h", "2h"])
    gpu_batches: list = field(default_factory=lambda: [100, 300, 1000, 3000, 10_000])
    cpu_batches: list = field(default_factory=lambda: [100, 1000, 10_000])  # serial-example: ~4 s a Net-2h step at 10,000
    cpu_impls: list = field(default_factory=lambda: ["threads", "blas-parallel"])  # the best CPU trainers
    threads: list = field(default_factory=lambda: [os.cpu_count() or 1])
    repeats: int = 7
    n_in: int = 784
    n_out: int = 10
    gpu_options: dict = field(default_factory=dict)
    kernel_batch: int = 1000  # MNIST width: 784 inputs, 1024 units
    kernel_units: int = 1024
    kernel_layouts: list = field(default_factory=lambda: [(16, 1), (32, 1), (16, 4), (8, 4)])  # paper's; default
    kernel_tol: float = 1e-4  # max |error| ÷ max |value|: float32 sums of ~1000 terms
    kernel_mnist: bool = True  # MNIST images as the input, when they travelled (784 wide: too slow simulated)
    tests: list = field(default_factory=lambda: ["-q", *TESTS])
    limits: dict = field(default_factory=lambda: {"tests": 150, "kernels": 90, "bench": 300})


DRY = Plan(nets=[[9, 7]], gpu_batches=[8], cpu_batches=[8],  # a simulated step: ~1 s
           cpu_impls=["threads"], threads=[1, 2], repeats=2, n_in=13, n_out=5,
           gpu_options={"simulator": True, "tile": 8}, kernel_batch=7, kernel_units=53, kernel_layouts=[(8, 4)],
           kernel_mnist=False,
           tests=["-q", "-x", TESTS[0] + "::test_forward_layer_is_sigmoid_of_affine", TESTS[0] + "::test_two_steps_match_the_reference", TESTS[1]],
           limits={"tests": 150, "kernels": 120, "bench": 240})


# -- What travels ----------------------------------------------------------------------------------
def travel_bytes(carry=(), root: Path = Path(".")) -> dict:
    """Bytes that a trip to the GPU machine takes: the tree (tracked and untracked-not-ignored files) and each
    carried path."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           check=True, capture_output=True).stdout.decode().split("\0")
    sizes = {"tree": sum((root / f).stat().st_size for f in files if f and (root / f).is_file())}
    for c in carry:
        path = root / c
        if not path.exists():
            raise FileNotFoundError(f"carried path {c} does not exist; build it first (make gpu-payload)")
        sizes[str(c)] = sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())
    return sizes


def build_payload(folder: Path) -> None:
    """What the GPU machine lacks, into ``folder`` (ignored by git; ``make gpu-payload``): setuptools >= 77 as a
    wheel (parbp's build needs it; the image's may be older), numpy < 2.5 for the image's Python 3.12 in
    ``wheels/cp312`` (numba-cuda 0.30 overloads ``np.row_stack``, which numpy 2.5 removed: on the image's numpy
    2.5.2 every kernel failed to compile) and the MNIST files."""
    from parbp import data

    shutil.rmtree(folder, ignore_errors=True)
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    subprocess.run([*download, "--implementation", "py", "-d", str(folder / "wheels"), "setuptools>=77"], check=True)
    subprocess.run([*download, "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux_2_27_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                    "-d", str(folder / "wheels" / "cp312"), "numpy>=2.0,<2.5"], check=True)
    for src in data.SOURCES["mnist"].values():
        (folder / "data" / src.folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data.fetch(src), folder / "data" / src.folder / src.filename)


def travel(carry) -> tuple[bool, str]:
    """Whether the tree and ``carry`` fit one trip (``TRAVEL_LIMIT``), and their sizes in one line."""
    sizes = travel_bytes(carry)
    total = sum(sizes.values())
    return total <= TRAVEL_LIMIT, (", ".join(f"{k} {n / 2**20:.2f} MiB" for k, n in sizes.items())
                                   + f"; {total / 2**20:.2f} MiB of {TRAVEL_LIMIT / 2**20:.0f} MiB")


# -- The steps (each run in its own process by ``campaign``) ---------------------------------------
def machine(out: Path, plan: Plan) -> None:
    import parbp
    from parbp import envinfo

    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    info = {"summary": envinfo.summary(), "machine_label": envinfo.machine_label(), "parbp_from": parbp.__file__,
            "numba_cuda_simulator": os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1",
            "nvidia_smi": smi.stdout if smi else "nvidia-smi not found"}
    (out / "machine.json").write_text(json.dumps(info, indent=1, default=str))
    print(info["machine_label"], "\nparbp from", info["parbp_from"])


def kernels(out: Path, plan: Plan) -> None:
    import numpy as np

    from parbp import cuda as pc
    from parbp import data

    A, source = None, "random"
    if plan.kernel_mnist and all(data.locate(s) for s in data.SOURCES["mnist"].values()):  # offline: no download
        A = data.load("mnist").X_train[:plan.kernel_batch]
        source = f"MNIST train[:{len(A)}]"
    errors = pc.check_kernels(plan.kernel_batch, plan.n_in, plan.kernel_units, plan.kernel_layouts, A=A)
    errors = errors.assign(relative=errors["max |error|"] / np.maximum(errors["max |value|"], 1e-30), input=source,
                           simulator=pc.simulator_enabled())
    errors.to_csv(out / "kernels.csv", index=False)
    print(errors.to_string(index=False))
    bad = errors[errors.relative > plan.kernel_tol]
    if len(bad):
        raise SystemExit(f"{len(bad)} kernel check(s) above relative error {plan.kernel_tol:g}:\n{bad.to_string()}")
    print(f"all {len(errors)} kernel checks within relative error {plan.kernel_tol:g} (input: {source})")


def bench(out: Path, plan: Plan) -> None:
    import pandas as pd

    from parbp import bench as b
    from parbp import experiments, results

    path, tables = out / "bench_gpu.csv", []

    def save(df, what):
        tables.append(df)
        results.write_csv(b.with_environment(pd.concat(tables, ignore_index=True)), path)
        print(f"{what}: {len(df)} rows -> {path}\n{b.format_table(df)}", flush=True)

    def run(impls, batches, threads, **kwargs):
        return b.run(impls, plan.nets, batches, threads, n_in=plan.n_in, n_out=plan.n_out,
                     progress=lambda msg: print(msg, flush=True), **{"repeats": plan.repeats, **kwargs})

    save(run(b.gpu_impls(), plan.gpu_batches, [1], device="gpu", **plan.gpu_options),
         "GPU trainers and torch on CUDA")
    save(run([experiments.BASELINE], plan.cpu_batches, [1], repeats=max(3, plan.repeats // 2), compare_torch=False),
         "the paper's baseline, on the CPU")
    save(run(plan.cpu_impls, plan.cpu_batches, plan.threads), "the best CPU trainers")


# in this order: the kernels' correctness first (seconds), then the measurement, then the tests with what is left
STEPS = {"machine": machine, "kernels": kernels, "bench": bench, "tests": None}


# -- The campaign ----------------------------------------------------------------------------------
def campaign(out: Path, dry_run: bool = False, limit_s: float = LIMIT_S) -> int:
    """Every step in its own process, from the repository root (the working directory: the tests live
    there), each under min(its limit, what is left of ``limit_s``); returns how many steps failed."""
    plan = DRY if dry_run else Plan()
    if not Path(TESTS[0]).is_file():
        raise SystemExit(f"run the campaign from the repository root: {TESTS[0]} is not in {Path.cwd()}")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1" if dry_run else "0", "PYTHONUNBUFFERED": "1"}
    log = (out / "campaign.log").open("w", buffering=1)  # line-buffered: a killed campaign keeps its log
    start, failed = time.perf_counter(), []

    def write(text):
        log.write(text)
        print(text, end="", flush=True)

    write(f"GPU campaign{' (DRY RUN: numba CUDA simulator, tiny sizes)' if dry_run else ''} into {out}\n")
    if dry_run:  # the rehearsal also weighs the trip: the tree and the payload, when built
        fits, sizes = travel([PAYLOAD] if Path(PAYLOAD).exists() else [])
        write(f"== travel: {'passed' if fits else 'FAILED'}: {sizes}\n")
        failed += [] if fits else ["travel"]
    for name in STEPS:
        limit = min(plan.limits.get(name, 60), limit_s - (time.perf_counter() - start))  # its share of what is left
        if limit < 5:
            write(f"== {name}: not run, the campaign's {limit_s:.0f} s are spent\n")
            failed.append(name)
            continue
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plan.tests] if name == "tests" else \
            [sys.executable, "-m", "parbp.gpu_campaign", "--step", name, "--out", str(out),
             *(["--dry-run"] if dry_run else [])]
        t0 = time.perf_counter()
        try:
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
            rc, text = run.returncode, run.stdout + run.stderr
        except subprocess.TimeoutExpired as e:
            rc, text = "timeout", (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        if name == "tests":
            (out / "tests.log").write_text(text)
        write(f"== {name}: {'passed' if rc == 0 else f'FAILED ({rc})'} in {time.perf_counter() - t0:.1f} s "
              f"(limit {limit:.0f} s)\n{text}\n")
        if rc != 0:
            failed.append(name)
    write(f"== campaign: {time.perf_counter() - start:.1f} s, "
          f"{'all steps passed' if not failed else 'failed: ' + ', '.join(failed)}\n")
    log.close()
    return len(failed)


def main(argv=None) -> int:
    from .cli import Parser, positive_float

    p = Parser(prog="python -m parbp.gpu_campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="the folder that receives every file of the campaign")
    p.add_argument("--dry-run", action="store_true", help="numba's CUDA simulator, tiny sizes (CI's rehearsal)")
    p.add_argument("--limit", type=positive_float, default=LIMIT_S, help=f"seconds for the whole campaign (default {LIMIT_S})")
    p.add_argument("--step", choices=[s for s, fn in STEPS.items() if fn], help=argparse.SUPPRESS)
    p.add_argument("--measure", nargs="*", metavar="CARRY",
                   help="print what would travel (the tree and these carried paths) and fail above 64 MiB")
    p.add_argument("--payload", type=Path, metavar="FOLDER", help="build the payload there, then --measure it")
    args = p.parse_args(argv)
    if args.payload:
        build_payload(args.payload)
    if args.payload or args.measure is not None:
        fits, sizes = travel([args.payload] if args.payload else args.measure)
        print(f"travels: {sizes}" + ("" if fits else "; too large, carry less"),
              file=sys.stdout if fits else sys.stderr)
        return 0 if fits else 1
    if args.out is None:
        p.error("--out is required (the folder for the campaign's files), unless --measure is given")
    if args.step:
        STEPS[args.step](args.out, DRY if args.dry_run else Plan())
        return 0
    return 1 if campaign(args.out, args.dry_run, args.limit) else 0


if __name__ == "__main__":
    from .cli import run

    sys.exit(run(main, prog="python -m parbp.gpu_campaign"))
