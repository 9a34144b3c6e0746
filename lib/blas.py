"""The BLAS the CPU trainers multiply with: numpy's OpenBLAS, or Intel's MKL where it is faster here.

    gemm_into(A, B, out)        out ← op(A)·op(B)             written in place
    gemm_update(A, D, W, lr)    W ← W − lr·AᵀD                one GEMM with beta = 1: the weight update
    axpy(W, G, lr)              W ← W − lr·G                  an update from a gradient already summed
    decide(rows, threads)       ("openblas" or "mkl", why): the one measured fastest here for a step's GEMMs

Each library through its own CBLAS. MKL (``pip install parbp[mkl]``) is loaded privately and sequential: it
may serve the one-thread products (the ``threads`` workers among them), OpenBLAS the multi-threaded ones.
Which one is decided per machine by timing a Net-2h step's GEMMs with each, side by side (``choice``; cached
per CPU and library versions in ``build/blas_choice.json``; ``PARBP_BLAS=openblas|mkl`` forces it): on Intel
Xeons MKL is much faster at small batches, on the AMD EPYC they are close.

Not scipy's BLAS: the OpenBLAS bundled with scipy serializes calls from several threads (two workers on two
cores ran at 0.87× one; numpy's at 1.80×). numpy's matmul has no ``beta``, so ``gemm_update`` calls numpy's
own library through ctypes (found with threadpoolctl; the GIL is released), or, where it has no CBLAS GEMM
under a name we know, a matmul into a temporary and a second pass over W.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from .envinfo import cpu_name, kernels, load
from .results import BUILD
from .timing import side_by_side

BACKENDS = ("openblas", "mkl")


@functools.cache  # built once: building a ThreadpoolController scans every loaded library (~1 ms)
def _all_blas() -> ThreadpoolController:
    return ThreadpoolController().select(user_api="blas")


@functools.cache
def _numpy_blas() -> ThreadpoolController:
    path = _numpy_blas_path()
    return _all_blas().select(filepath=path) if path else _all_blas()


@contextlib.contextmanager
def blas_threads(n: int):
    """Context manager: numpy's BLAS uses ``n`` threads inside it (other libraries, PyTorch's own MKL
    among them, keep their own)."""
    with _numpy_blas().limit(limits=n):  # MKL runs sequential (see _mkl): it has no threads to limit
        yield


def gemm_into(A, B, out, trans_a=False, trans_b=False, backend="openblas"):
    """out ← op(A)·op(B), the result written in place, nothing copied when the operands are row-major
    with unit column stride (transposed operands go to BLAS as flags). ``backend`` (see ``BACKENDS``)
    picks the library; numpy's matmul runs OpenBLAS, and any layout CBLAS cannot take."""
    if backend != "openblas":
        gemm = cblas_gemm(out.dtype, backend)
        lds = [_ld(M) for M in (A, B, out)]
        if gemm is not None and None not in lds and A.dtype == B.dtype == out.dtype and out.size:
            m, n = out.shape
            k = A.shape[0] if trans_a else A.shape[1]
            gemm(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, m, n, k, 1.0,
                 A.ctypes.data, lds[0], B.ctypes.data, lds[1], 0.0, out.ctypes.data, lds[2])
            return
    np.matmul(A.T if trans_a else A, B.T if trans_b else B, out=out)


# -- The weight update as one GEMM -----------------------------------------------------------------
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol, integer type) by BLAS build: numpy's wheels (ILP64 OpenBLAS with scipy_ prefix and 64_ suffix),
# other ILP64 builds, and the plain LP64 CBLAS of conda-forge, MKL or a system OpenBLAS.
_SYMBOLS = {
    np.float32: [("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm", ctypes.c_int32)],
    np.float64: [("scipy_cblas_dgemm64_", ctypes.c_int64), ("cblas_dgemm64_", ctypes.c_int64), ("cblas_dgemm", ctypes.c_int32)],
}
def _numpy_blas_path() -> str | None:
    """The file of the BLAS numpy uses: the one threadpoolctl finds next to numpy (wheels ship it in
    numpy.libs) or, failing that, the only BLAS loaded."""
    libs = [c.filepath for c in _all_blas().lib_controllers]
    numpy_dir = Path(np.__file__).resolve().parent
    for path in libs:
        if any(Path(path).resolve().is_relative_to(d) for d in (numpy_dir, numpy_dir.with_name("numpy.libs"))):
            return path
    return libs[0] if len(libs) == 1 else None


def cblas_gemm(dtype, backend="openblas"):
    """The CBLAS ``?gemm`` for ``dtype`` of ``backend`` (numpy's OpenBLAS, or MKL) as a ctypes function,
    or None where it cannot be found."""
    if backend == "mkl":
        return _mkl_gemm(np.dtype(dtype).type)
    if backend != "openblas":
        raise ValueError(f"unknown BLAS backend {backend!r}: expected one of {BACKENDS}")
    return _load_gemm(np.dtype(dtype).type)


def _gemm_argtypes(real, integer):
    p = ctypes.c_void_p
    return [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, real, p, integer, p, integer, real, p, integer]


@functools.cache
def _load_gemm(dtype):
    path = _numpy_blas_path()
    if path is None or dtype not in _SYMBOLS:
        return None
    lib = ctypes.CDLL(path)
    real = ctypes.c_float if dtype is np.float32 else ctypes.c_double
    for symbol, integer in _SYMBOLS[dtype]:
        fn = getattr(lib, symbol, None)
        if fn is not None:
            fn.argtypes, fn.restype = _gemm_argtypes(real, integer), None
            return fn
    return None


def _ld(M) -> int | None:
    """Leading dimension of a row-major view (unit column stride), else None."""
    item = M.itemsize
    if M.strides[1] != item or M.strides[0] % item or M.strides[0] < M.shape[1] * item:
        return None
    return M.strides[0] // item


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def axpy(W, G, lr):
    """W ← W − lr·G in place (releases the GIL, so workers can each take a block of rows)."""
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            W[i, j] -= lr * G[i, j]


def gemm_update(A, D, W, lr, backend="openblas"):
    """W ← W − lr·AᵀD in one GEMM (alpha = −lr, beta = 1: the gradient is never stored). A (B, m), D (B, n),
    W (m, n) of one dtype, row-major views with unit column stride (``A[:, r0:r1]`` with ``W[r0:r1]``: a
    worker's share). Without a CBLAS, or for other layouts, AᵀD goes to a temporary and a second pass."""
    (B, m), n = A.shape, D.shape[1]
    if D.shape[0] != B or W.shape != (m, n) or not (A.dtype == D.dtype == W.dtype):
        raise ValueError(f"gemm_update: expected A (B, m), D (B, n), W (m, n) of one dtype, got "
                         f"A{A.shape} {A.dtype}, D{D.shape} {D.dtype}, W{W.shape} {W.dtype}")
    gemm = cblas_gemm(W.dtype, backend)
    lds = [_ld(M) for M in (A, D, W)]
    if gemm is not None and None not in lds and B > 0:
        gemm(_ROW_MAJOR, _TRANS, _NO_TRANS, m, n, B, -lr, A.ctypes.data, lds[0], D.ctypes.data, lds[1],
             1.0, W.ctypes.data, lds[2])
        return
    G = np.empty_like(W)
    gemm_into(A, D, G, trans_a=True)
    axpy(W, G, W.dtype.type(lr))


# -- MKL, when the optional wheel is installed -----------------------------------------------------
_MKL_THREADING = {"sequential": 1}  # MKL_Set_Threading_Layer's code
_MKL_LP64 = 0


def mkl_path() -> str | None:
    """The file of MKL's single dynamic library (``libmkl_rt``) from the ``mkl`` wheel, or None."""
    try:
        files = importlib.metadata.files("mkl") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith("libmkl_rt.so") or f.name in ("libmkl_rt.dylib", "mkl_rt.2.dll"):
            path = Path(f.locate()).resolve()
            if path.exists():
                return str(path)
    return None


@functools.cache
def _mkl():
    """MKL loaded privately (RTLD_LOCAL: its symbols meet neither numpy's OpenBLAS nor PyTorch's MKL) and
    sequential (a third thread pool, MKL's OpenMP, made its one-thread calls 10-20x slower in a full benchmark
    on 2 cores), or None where it is not installed."""
    path = mkl_path()
    if path is None:
        return None
    layer = "sequential"
    lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_LOCAL", 0))
    # both must come before MKL's first computation: 32-bit integers (LP64), no threads of its own
    lib.MKL_Set_Threading_Layer.argtypes = lib.MKL_Set_Interface_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Interface_Layer(_MKL_LP64)
    lib.MKL_Set_Threading_Layer(_MKL_THREADING[layer])
    for dtype, real in ((np.float32, ctypes.c_float), (np.float64, ctypes.c_double)):
        fn = getattr(lib, "cblas_sgemm" if dtype is np.float32 else "cblas_dgemm")
        fn.argtypes, fn.restype = _gemm_argtypes(real, ctypes.c_int32), None
    lib.threading_layer = layer
    return lib


def _mkl_gemm(dtype):
    lib = _mkl()
    if lib is None or dtype not in (np.float32, np.float64):
        return None
    return lib.cblas_sgemm if dtype is np.float32 else lib.cblas_dgemm


def mkl_version() -> str | None:
    lib = _mkl()
    if lib is None:
        return None
    buf = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(buf, len(buf))
    return buf.value.decode(errors="replace").strip()


def available_backends() -> list[str]:
    """The backends that can run here: OpenBLAS always, MKL where its wheel is installed."""
    return ["openblas", *(["mkl"] if _mkl() is not None else [])]


def library(backend: str) -> str:
    """The library behind a backend, with its version and kernels (what a result should record)."""
    if backend == "mkl":
        return f"{mkl_version()} ({_mkl().threading_layer} threads)"
    info = [c.info() for c in _numpy_blas().lib_controllers]
    return "; ".join(kernels(i) for i in info)


# -- Which backend, decided on this machine by timing a step's GEMMs with each ---------------------
CHOICE_FILE = BUILD / "blas_choice.json"
CHOICE_ROWS = (10, 100, 1000)  # examples per worker at which the step's GEMMs are timed
CHOICE_SIZES = (784, 1024, 1024, 10)  # Net-2h on MNIST, the study's main network
CHOICE_MARGIN = 0.05  # MKL replaces OpenBLAS (the default) only when this much faster, in the median and in
                      # more than 3/4 of the rounds: noise is not a reason
CHOICE_SAMPLE_S, CHOICE_ROUNDS = 0.01, 7
CHOICE_THREADS = 1  # the BLAS threads at which the backends are compared: MKL runs sequential (see ``_mkl``)
_choice_lock = threading.Lock()


def machine_key() -> str:
    """What the decision depends on: the CPU model and the libraries' versions."""
    return " | ".join([cpu_name(), f"numpy {np.__version__}", library("openblas"),
                       *([library("mkl")] if _mkl() is not None else [])])


class StepGemms:
    """The GEMMs of one SGD step (forward, backward, update of every layer) at ``rows`` examples, through
    one backend: what a trainer's worker multiplies. Calling it runs them once."""

    def __init__(self, backend, rows, sizes=CHOICE_SIZES, seed=0):
        rng = np.random.default_rng(seed)
        self.backend = backend
        self.flops = 6 * rows * sum(m * n for m, n in zip(sizes, sizes[1:])) - 2 * rows * sizes[0] * sizes[1]
        self.W = [rng.random((m, n), dtype=np.float32) * 0.01 for m, n in zip(sizes, sizes[1:])]
        self.A = [rng.random((rows, n), dtype=np.float32) for n in sizes]
        self.D = [rng.random((rows, n), dtype=np.float32) for n in sizes[1:]]

    def __call__(self):
        L = len(self.W)
        for l in range(L):
            gemm_into(self.A[l], self.W[l], self.A[l + 1], backend=self.backend)
        for l in range(L - 1, 0, -1):
            gemm_into(self.D[l], self.W[l], self.D[l - 1], trans_b=True, backend=self.backend)
        for l in range(L):
            gemm_update(self.A[l], self.D[l], self.W[l], 1e-9, backend=self.backend)


def time_backends(rows: int, threads: int = 1, backends=None, rounds: int | None = None) -> dict[str, list[float]]:
    """Milliseconds for a step's GEMMs (``StepGemms``) with each backend, one sample per round, timed side by
    side: in each round every backend runs briefly untimed (its threads wake, the other's go idle) and
    then is timed once. Samples of one round were taken seconds apart, under the same load."""
    backends = list(backends or available_backends())
    with blas_threads(threads):
        samples = side_by_side([StepGemms(b, rows) for b in backends], rounds or CHOICE_ROUNDS, warmup=1,
                               min_sample_s=CHOICE_SAMPLE_S, rewarm_s=CHOICE_SAMPLE_S)
    return {b: [t * 1e3 for t in s] for b, s in zip(backends, samples)}


def measure_choice() -> dict:
    """Time every backend on a step's GEMMs at each of ``CHOICE_ROWS`` and pick one for each."""
    decisions = []
    for rows in CHOICE_ROWS:
        samples = time_backends(rows, CHOICE_THREADS)
        ms = {b: float(np.median(s)) for b, s in samples.items()}
        backend = "openblas"
        for other in ms.keys() - {"openblas"}:
            # faster by the margin in the median and in most rounds: a burst of load on one side is no reason
            wins = sum(o < (1 - CHOICE_MARGIN) * b for o, b in zip(samples[other], samples["openblas"]))
            if ms[other] < (1 - CHOICE_MARGIN) * ms[backend] and wins > 0.75 * len(samples[other]):
                backend = other
        decisions.append({"threads": CHOICE_THREADS, "rows": rows, "ms": ms, "backend": backend,
                          "rounds_won": {b: sum(v < (1 - CHOICE_MARGIN) * o for v, o in zip(s, samples["openblas"]))
                                         for b, s in samples.items() if b != "openblas"}})
    return {"key": machine_key(), "backends": available_backends(), "decisions": decisions,
            "loadavg": load(),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def choice(path=None, remeasure: bool = False) -> dict:
    """This machine's decision: read from ``path`` (default ``CHOICE_FILE``) when it was made for this CPU
    and these libraries, else measured (a few seconds) and written there atomically."""
    from .results import atomic_write

    path = Path(path or CHOICE_FILE)
    # one measurement per machine: MPI ranks or engines starting together wait for the first one's decision
    # (measuring side by side would load each other's timings and could decide differently per rank)
    with _choice_lock, _file_lock(path):
        key = machine_key()
        try:
            saved = json.loads(path.read_text())  # {machine key: decision}, one per CPU and library set
            saved = saved if isinstance(saved, dict) else {}
        except (OSError, ValueError):
            saved = {}
        made = saved.get(key)
        if made and made.get("backends") == available_backends() and not remeasure:
            return made
        made = saved[key] = measure_choice()
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(saved, indent=1)))
        except OSError as e:  # a read-only checkout: decide again next time
            print(f"parbp.blas: could not cache the BLAS choice in {path}: {e}", file=sys.stderr)
        return made


@contextlib.contextmanager
def _file_lock(path: Path):
    """An inter-process lock beside ``path``. Where it cannot be taken (a read-only checkout, or another
    process holding it for 2 minutes: filelock's Timeout is an OSError) the choice goes on unlocked."""
    from filelock import FileLock

    lock = FileLock(str(path) + ".lock", timeout=120)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


@functools.cache
def _choice() -> dict:
    return choice()


def forced_backend() -> str | None:
    """``PARBP_BLAS`` when it names a backend; None for ``auto`` or unset."""
    forced = os.environ.get("PARBP_BLAS", "auto").strip().lower()
    if forced in ("auto", *available_backends()):
        return None if forced == "auto" else forced
    if forced in BACKENDS:
        raise RuntimeError(f"PARBP_BLAS={forced}: not installed here (pip install 'parbp[mkl]'); available: "
                           + ", ".join(available_backends()))
    raise ValueError(f"PARBP_BLAS={forced!r}: expected one of auto, {', '.join(BACKENDS)}")


def decide(rows: int, threads: int = 1) -> tuple[str, str]:
    """(backend, the reason: what a result records beside its timings) for GEMMs over ``rows`` examples at
    ``threads`` BLAS threads: OpenBLAS for more than one thread; else ``PARBP_BLAS`` if set, OpenBLAS if it is
    the only one, else this machine's measured choice for the nearest measured case."""
    return _decide(int(rows), int(threads), os.environ.get("PARBP_BLAS"))


@functools.lru_cache(maxsize=256)  # trainers ask at every step
def _decide(rows, threads, _forced_env):
    forced = forced_backend()
    if threads > 1:
        return "openblas", "multi-threaded products stay on OpenBLAS (MKL runs sequential here)"
    if forced:
        return forced, "PARBP_BLAS"
    if available_backends() == ["openblas"]:
        return "openblas", "the only BLAS installed"
    made = _choice()
    near = min(made["decisions"], key=lambda d: (abs(math.log(d["threads"] / max(threads, 1))),
                                                  abs(math.log(d["rows"] / max(rows, 1)))))
    ms = near["ms"]
    others = ", ".join(f"{b} {v:.3g} ms" for b, v in ms.items())
    return near["backend"], f"measured: step GEMMs at {near['rows']} rows, {near['threads']} thread(s): {others}"
