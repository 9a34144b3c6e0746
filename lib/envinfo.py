"""What machine a measurement was taken on: CPU, cores, BLAS and its threads, package versions, GPU."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re

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
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg if pkg != "cupy" else _cupy_dist())
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _cupy_dist() -> str:
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith("cupy"):
            return name
    return "cupy"


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
    try:
        from numba import config, cuda

        if cuda.is_available() and not config.ENABLE_CUDASIM:
            name = cuda.get_current_device().name
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # numba-cuda missing or the driver broken: no GPU for us either way
        pass
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
    blas_libs = blas()
    return {
        "cpu": cpu_name(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "affinity": usable_cores(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "blas": "; ".join(f"{kernels(b)} ({b['num_threads']} threads)" for b in blas_libs),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(auto)"),
        "gpu": gpu() or "none",
        **{f"v_{k}": v for k, v in versions().items()},
    }
