"""What machine a measurement was taken on: CPU, cores, BLAS and its threads, package versions, GPU."""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
from pathlib import Path

import psutil
from threadpoolctl import threadpool_info

PACKAGES = ("numpy", "numba", "scipy", "torch", "pytensor", "cupy", "mpi4py", "ipyparallel", "pandas")


def load() -> float:
    """The 1-minute load average (NaN where the OS has none): how busy the shared machine was."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what ``platform`` knows)."""
    with contextlib.suppress(OSError):
        if found := re.search(r"^model name[^:]*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M):
            return found.group(1).strip()
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    """Python's version and each installed package's of ``PACKAGES`` (cupy under its wheel's name, cupy-cudaNN)."""
    cupy = next((d.metadata["Name"] for d in importlib.metadata.distributions()
                 if (d.metadata["Name"] or "").lower().startswith("cupy")), "cupy")
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(cupy if pkg == "cupy" else pkg)
    return out


def blas() -> list[dict]:
    """The BLAS/OpenMP libraries numpy (and friends) loaded, with their thread counts (threadpoolctl)."""
    import numpy  # noqa: F401  (loads numpy's BLAS so threadpoolctl can see it)

    keys = ("user_api", "internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info()]


def kernels(lib: dict) -> str:
    """A BLAS library as threadpoolctl reports it, in a few words: its API, version and CPU kernels."""
    return f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture') or ''}".rstrip()


def gpu() -> str:
    """The GPU's name, or '' when there is none (numba's simulator is not a GPU)."""
    with contextlib.suppress(Exception):  # numba-cuda missing or the driver broken: no GPU for us either way
        from numba import config, cuda

        if cuda.is_available() and not config.ENABLE_CUDASIM:
            name = cuda.get_current_device().name
            return name.decode() if isinstance(name, bytes) else str(name)
    return ""


def machine_label() -> str:
    """One line naming the machine, stamped on every figure: CPU, cores, numpy's BLAS and its kernels, GPU."""
    numpy_blas = next((b for b in blas() if b["user_api"] == "blas" and "numpy" in (b["filepath"] or "")), None)
    return f"{cpu_name()}, {os.cpu_count()} cores, {kernels(numpy_blas) if numpy_blas else 'BLAS unknown'}, " \
           f"GPU: {gpu() or 'none'}"


def label_of(row) -> str:
    """``machine_label`` of the machine a committed row was measured on, from its ``env_`` columns."""
    libs = [re.sub(r"\s*\(\d+ threads\)$", "", b.strip()) for b in str(row["env_blas"]).split(";")]
    blas_name = next((b for b in libs if not b.startswith("openmp")), libs[0])  # numpy's BLAS is listed first
    return f"{row['env_cpu']}, {row['env_cores_logical']} cores, {blas_name}, GPU: {row.get('env_gpu') or 'none'}"


def summary() -> dict:
    """One flat dict, suitable for a CSV header or a notebook table."""
    return {
        "cpu": cpu_name(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "affinity": usable_cores(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "blas": "; ".join(f"{kernels(b)} ({b['num_threads']} threads)" for b in blas()),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(auto)"),
        "gpu": gpu() or "none",
        **{f"v_{k}": v for k, v in versions().items()},
    }
