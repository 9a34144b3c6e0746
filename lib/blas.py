"""The BLAS the CPU trainers multiply with: numpy's OpenBLAS, or Intel's MKL where it is faster here.

    gemm_into(A, B, out)        out ← op(A)·op(B)             written in place
    gemm_update(A, D, W, lr)    W ← W − lr·AᵀD                one GEMM with beta = 1: the weight update
    axpy(W, G, lr)              W ← W − lr·G                  an update from a gradient already summed
    decide(rows, threads)       ("openblas" or "mkl", why): the one measured fastest here for a step's GEMMs

Each library through its own CBLAS. MKL (``pip install parbp[mkl]``) is loaded privately and sequential: it
may serve the one-thread products (the ``threads`` workers among them), OpenBLAS the multi-threaded ones.
Which one is decided per machine by timing a Net-2h step's GEMMs with each, side by side (``choice``; cached
per CPU and library versions in ``build/blas_choice.json``; ``PARBP_BLAS=openblas|mkl`` forces it): on Intel
Xeons MKL is much faster at small batches, on the AMD EPYC they are close. Not scipy's BLAS: the OpenBLAS
bundled with scipy serializes calls from several threads (two workers on two cores ran at 0.87× one; numpy's
at 1.80×); numpy's matmul has no ``beta``, so ``gemm_update`` calls numpy's own library through ctypes (found
with threadpoolctl; the GIL is released).
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
from .results import BUILD, atomic_write
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
    if backend == "openblas" or not _cblas(A, B, out, trans_a, trans_b, 1.0, 0.0, backend):
        np.matmul(A.T if trans_a else A, B.T if trans_b else B, out=out)


def gemm_update(A, D, W, lr, backend="openblas"):
    """W ← W − lr·AᵀD in one GEMM (alpha = −lr, beta = 1: the gradient is never stored). A (B, m), D (B, n),
    W (m, n) of one dtype, row-major views with unit column stride (``A[:, r0:r1]`` with ``W[r0:r1]``: a
    worker's share). Without a CBLAS, or for other layouts, AᵀD goes to a temporary and a second pass."""
    (B, m), n = A.shape, D.shape[1]
    if D.shape[0] != B or W.shape != (m, n) or not (A.dtype == D.dtype == W.dtype):
        raise ValueError(f"gemm_update: expected A (B, m), D (B, n), W (m, n) of one dtype, got "
                         f"A{A.shape} {A.dtype}, D{D.shape} {D.dtype}, W{W.shape} {W.dtype}")
    if not _cblas(A, D, W, True, False, -lr, 1.0, backend):
        G = np.empty_like(W)
        gemm_into(A, D, G, trans_a=True)
        axpy(W, G, W.dtype.type(lr))


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def axpy(W, G, lr):
    """W ← W − lr·G in place (releases the GIL, so workers can each take a block of rows)."""
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            W[i, j] -= lr * G[i, j]


# -- CBLAS through ctypes --------------------------------------------------------------------------
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _cblas(A, B, C, trans_a, trans_b, alpha, beta, backend) -> bool:
    """C ← alpha·op(A)·op(B) + beta·C through ``backend``'s CBLAS; False, with nothing done, where it cannot:
    no CBLAS GEMM found, mixed dtypes, an empty product, or an operand without unit column stride."""
    gemm, lds = cblas_gemm(C.dtype, backend), [_ld(M) for M in (A, B, C)]
    k = A.shape[0] if trans_a else A.shape[1]
    if gemm is None or None in lds or not (A.dtype == B.dtype == C.dtype) or not (C.size and k):
        return False
    gemm(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, *C.shape, k, alpha,
         A.ctypes.data, lds[0], B.ctypes.data, lds[1], beta, C.ctypes.data, lds[2])
    return True


def _ld(M) -> int | None:
    """Leading dimension of a row-major view (unit column stride), else None."""
    item, (row, column) = M.itemsize, M.strides
    return row // item if column == item and row % item == 0 and row >= M.shape[1] * item else None


def _numpy_blas_path() -> str | None:
    """The file of the BLAS numpy uses: the one threadpoolctl finds next to numpy (wheels ship it in
    numpy.libs) or, failing that, the only BLAS loaded."""
    libs = [c.filepath for c in _all_blas().lib_controllers]
    numpy_dir = Path(np.__file__).resolve().parent
    return next((path for path in libs if any(Path(path).resolve().is_relative_to(d)
                                              for d in (numpy_dir, numpy_dir.with_name("numpy.libs")))),
                libs[0] if len(libs) == 1 else None)


def cblas_gemm(dtype, backend="openblas"):
    """The CBLAS ``?gemm`` for ``dtype`` of ``backend`` (numpy's OpenBLAS, or MKL) as a ctypes function,
    or None where it cannot be found."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown BLAS backend {backend!r}: expected one of {BACKENDS}")
    return _load_gemm(np.dtype(dtype).type, backend)


@functools.cache
def _load_gemm(dtype, backend):
    real, c = {np.float32: (ctypes.c_float, "s"), np.float64: (ctypes.c_double, "d")}.get(dtype, (None, ""))
    # symbols by BLAS build: numpy's wheels (ILP64 OpenBLAS with scipy_ prefix and 64_ suffix), other ILP64
    # builds, and the plain LP64 CBLAS of conda-forge, MKL (set to LP64 in _mkl) or a system OpenBLAS
    if backend == "mkl":
        lib, symbols = _mkl(), []
    else:
        path = _numpy_blas_path()
        lib = ctypes.CDLL(path) if path else None
        symbols = [(f"scipy_cblas_{c}gemm64_", ctypes.c_int64), (f"cblas_{c}gemm64_", ctypes.c_int64)]
    if lib is None or real is None:
        return None
    for symbol, integer in [*symbols, (f"cblas_{c}gemm", ctypes.c_int32)]:
        fn = getattr(lib, symbol, None)
        if fn is not None:
            p = ctypes.c_void_p  # (order, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
            fn.argtypes = [ctypes.c_int] * 3 + [integer] * 3 + [real, p, integer, p, integer, real, p, integer]
            fn.restype = None
            return fn
    return None


# -- MKL, when the optional wheel is installed -----------------------------------------------------
@functools.cache
def _mkl():
    """MKL's single dynamic library (``libmkl_rt``) from the ``mkl`` wheel, loaded privately (RTLD_LOCAL: its
    symbols meet neither numpy's OpenBLAS nor PyTorch's MKL) and sequential (a third thread pool, MKL's OpenMP,
    made its one-thread calls 10-20x slower in a full benchmark on 2 cores), or None where it is not installed."""
    try:
        files = importlib.metadata.files("mkl") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    paths = [Path(f.locate()).resolve() for f in files
             if f.name.startswith("libmkl_rt.so") or f.name in ("libmkl_rt.dylib", "mkl_rt.2.dll")]
    path = next((p for p in paths if p.exists()), None)
    if path is None:
        return None
    lib = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0))
    # both must come before MKL's first computation: 32-bit integers (LP64), no threads of its own
    lib.MKL_Set_Threading_Layer.argtypes = lib.MKL_Set_Interface_Layer.argtypes = [ctypes.c_int]
    lib.MKL_Set_Interface_Layer(0)  # MKL_INTERFACE_LP64
    lib.MKL_Set_Threading_Layer(1)  # MKL_THREADING_SEQUENTIAL
    lib.threading_layer = "sequential"
    return lib


def available_backends() -> list[str]:
    """The backends that can run here: OpenBLAS always, MKL where its wheel is installed."""
    return ["openblas", *(["mkl"] if _mkl() is not None else [])]


def library(backend: str) -> str:
    """The library behind a backend, with its version and kernels (what a result should record)."""
    if backend == "mkl":
        version = ctypes.create_string_buffer(256)
        _mkl().MKL_Get_Version_String(version, len(version))
        return f"{version.value.decode(errors='replace').strip()} ({_mkl().threading_layer} threads)"
    return "; ".join(kernels(c.info()) for c in _numpy_blas().lib_controllers)


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
    return " | ".join([cpu_name(), f"numpy {np.__version__}", *map(library, available_backends())])


class StepGemms:
    """The GEMMs of one SGD step (forward, backward, update of every layer) at ``rows`` examples, through
    one backend: what a trainer's worker multiplies. Calling it runs them once."""

    def __init__(self, backend, rows, sizes=CHOICE_SIZES, seed=0):
        rng = np.random.default_rng(seed)
        self.backend = backend
        self.W = [rng.random((m, n), dtype=np.float32) * 0.01 for m, n in zip(sizes, sizes[1:])]
        self.A = [rng.random((rows, n), dtype=np.float32) for n in sizes]
        self.D = [rng.random((rows, n), dtype=np.float32) for n in sizes[1:]]

    def __call__(self):
        for l in range(len(self.W)):
            gemm_into(self.A[l], self.W[l], self.A[l + 1], backend=self.backend)
        for l in range(len(self.W) - 1, 0, -1):
            gemm_into(self.D[l], self.W[l], self.D[l - 1], trans_b=True, backend=self.backend)
        for l in range(len(self.W)):
            gemm_update(self.A[l], self.D[l], self.W[l], 1e-9, backend=self.backend)


def measure_choice() -> dict:
    """Time every backend on a step's GEMMs (``StepGemms``) at each of ``CHOICE_ROWS`` and pick one for each.
    Side by side: in each round every backend runs briefly untimed (its threads wake, the other's go idle), then
    is timed once, so one round's samples share its load."""
    backends, decisions = available_backends(), []
    for rows in CHOICE_ROWS:
        with blas_threads(CHOICE_THREADS):
            samples = side_by_side([StepGemms(b, rows) for b in backends], CHOICE_ROUNDS, warmup=1,
                                   min_sample_s=CHOICE_SAMPLE_S, rewarm_s=CHOICE_SAMPLE_S)
        samples = {b: [t * 1e3 for t in s] for b, s in zip(backends, samples)}  # milliseconds
        ms = {b: float(np.median(s)) for b, s in samples.items()}
        # faster by the margin in the median and in most rounds: a burst of load on one side is no reason
        won = {b: sum(v < (1 - CHOICE_MARGIN) * o for v, o in zip(s, samples["openblas"]))
               for b, s in samples.items() if b != "openblas"}
        backend = next((b for b, n in won.items() if ms[b] < (1 - CHOICE_MARGIN) * ms["openblas"]
                        and n > 0.75 * len(samples[b])), "openblas")
        decisions.append({"threads": CHOICE_THREADS, "rows": rows, "ms": ms, "backend": backend, "rounds_won": won})
    return {"key": machine_key(), "backends": backends, "decisions": decisions, "loadavg": load(),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def choice(path=None, remeasure: bool = False) -> dict:
    """This machine's decision: read from ``path`` (default ``CHOICE_FILE``) when it was made for this CPU
    and these libraries, else measured (a few seconds) and written there atomically."""
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

    with contextlib.ExitStack() as held:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(FileLock(str(path) + ".lock", timeout=120))
        except OSError:
            pass  # unlocked
        yield


@functools.cache
def _choice() -> dict:
    return choice()


def decide(rows: int, threads: int = 1) -> tuple[str, str]:
    """(backend, the reason: what a result records beside its timings) for GEMMs over ``rows`` examples at
    ``threads`` BLAS threads: OpenBLAS for more than one thread; else ``PARBP_BLAS`` if set, OpenBLAS if it is
    the only one, else this machine's measured choice for the nearest measured case."""
    return _decide(int(rows), int(threads), os.environ.get("PARBP_BLAS"))


@functools.lru_cache(maxsize=256)  # trainers ask at every step
def _decide(rows, threads, forced):
    forced = "auto" if forced is None else forced.strip().lower()  # PARBP_BLAS, unset or auto: not forced
    if forced not in ("auto", *available_backends()):
        if forced in BACKENDS:
            raise RuntimeError(f"PARBP_BLAS={forced}: not installed here (pip install 'parbp[mkl]'); available: "
                               + ", ".join(available_backends()))
        raise ValueError(f"PARBP_BLAS={forced!r}: expected one of auto, {', '.join(BACKENDS)}")
    if threads > 1:
        return "openblas", "multi-threaded products stay on OpenBLAS (MKL runs sequential here)"
    if forced != "auto":
        return forced, "PARBP_BLAS"
    if available_backends() == ["openblas"]:
        return "openblas", "the only BLAS installed"
    near = min(_choice()["decisions"], key=lambda d: (abs(math.log(d["threads"] / max(threads, 1))),
                                                  abs(math.log(d["rows"] / max(rows, 1)))))
    others = ", ".join(f"{b} {v:.3g} ms" for b, v in near["ms"].items())
    return near["backend"], f"measured: step GEMMs at {near['rows']} rows, {near['threads']} thread(s): {others}"
