"""The Theano side of the "theano" trainer, and the graph that "pytensor" compiles too.

Theano (theano-pymc 1.1.2) breaks on numpy >= 1.24, so this file runs as a script in its own pinned venv
(``make theano-env``), answering ``parbp.baselines.TheanoTrainer`` over stdin/stdout. Inside parbp (numpy 2)
it is imported for the protocol and for ``SGDGraph``, so "theano" and "pytensor" run the same graph code.
Hence: standard library and numpy only, nothing from parbp (python 3.11, numpy 1.23, no parbp installed).

Wire format, one message each way per request: 8 bytes, the little-endian length n of a JSON header
{"op": ..., "arrays": [[dtype_str, shape], ...]}; the n bytes of the header; each array's raw C-order bytes
in header order (never pickles, on which numpy 1.23 and 2 need not agree).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import struct
import sys
import threading
import time
import traceback

import numpy as np

_LEN = struct.Struct("<Q")


# -- protocol --------------------------------------------------------------------------------------
def write_message(stream, header: dict, arrays=()) -> None:
    # not np.ascontiguousarray: it would turn a 0-d array into a 1-d one
    arrays = [a if a.flags.c_contiguous else a.copy(order="C") for a in map(np.asarray, arrays)]
    head = json.dumps(dict(header, arrays=[[a.dtype.str, list(a.shape)] for a in arrays])).encode()
    stream.write(_LEN.pack(len(head)) + head)
    for a in arrays:
        if a.size:
            stream.write(memoryview(a.reshape(-1)).cast("B"))  # a view: no copy of big batches
    stream.flush()


def _read_exactly(stream, n: int, first: bool = False):
    """n bytes from the stream; None at a clean end of stream before the ``first`` bytes of a message (the other
    side is gone), EOFError anywhere else."""
    buf = bytearray(n)
    got = stream.readinto(buf)  # a buffered stream reads until n bytes or the end of the stream
    if got == n:
        return buf
    if first and not got:
        return None
    raise EOFError(f"stream ended inside a message, after {got} of {n} bytes")


def read_message(stream):
    """(header, arrays), or None when the other side closed the stream."""
    raw = _read_exactly(stream, _LEN.size, first=True)
    if raw is None:
        return None
    header = json.loads(bytes(_read_exactly(stream, *_LEN.unpack(raw))))
    arrays = []
    for dtype, shape in header.pop("arrays"):
        data = _read_exactly(stream, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape))
    return header, arrays


# -- the graph -------------------------------------------------------------------------------------
class SGDGraph:
    """The study's network as Theano-API graphs (``theano`` or ``pytensor``, its tensor module ``T`` and sigmoid
    op): shared parameters, and one compiled SGD step whose updates rewrite them in place, as a Theano user
    would write it: loss = 1/B Σ ||Y - A_L||², grads = T.grad(loss, params), p <- p - lr * g."""

    def __init__(self, theano, T, sigmoid, params, dtype: str, mode=None):
        self.dtype = dtype
        X, Y = T.matrix("X", dtype=dtype), T.matrix("Y", dtype=dtype)
        lr = T.scalar("lr", dtype=dtype)
        self.shared = [theano.shared(np.array(value, dtype=dtype), name=f"{kind}{l}")
                       for l, pair in enumerate(params) for kind, value in zip("Wb", pair)]
        A = X
        for W, b in zip(self.shared[0::2], self.shared[1::2]):
            A = sigmoid(T.dot(A, W) + b)
        # cast B so that float32 graphs stay float32 (X.shape[0] is int64, which would upcast)
        loss = T.sum((Y - A) ** 2) / T.cast(X.shape[0], dtype)
        grads = theano.grad(loss, self.shared)
        updates = [(p, p - lr * g) for p, g in zip(self.shared, grads)]
        self.step = theano.function([X, Y, lr], loss, updates=updates, mode=mode)
        self.predict = theano.function([X], A, mode=mode)
        # (loss, gradients) without updating, compiled on first use: most runs never need it
        self.gradients = functools.cache(lambda: theano.function([X, Y], [loss, *grads], mode=mode))

    def answer(self, header: dict, arrays: list):
        """One request of the protocol (everything but init and close) run on this graph: (reply header, reply
        arrays). Parameters and gradients travel flat: [W0, b0, W1, b1, ...]."""
        op = header.get("op")
        if op == "step":
            return {"loss": float(self.step(*arrays, np.asarray(header["lr"], dtype=self.dtype)))}, []
        if op == "gradients":
            loss, *grads = self.gradients()(*arrays)
            return {"loss": float(loss)}, grads
        if op == "predict":
            return {}, [self.predict(*arrays)]
        if op == "get_params":
            return {}, [p.get_value() for p in self.shared]  # copies
        if op == "apply_gradients":
            for p, g in zip(self.shared, arrays):
                p.set_value(p.get_value(borrow=True) - np.asarray(header["lr"], dtype=g.dtype) * g)
        elif op == "set_params":
            for p, v in zip(self.shared, arrays):
                p.set_value(np.array(v, dtype=p.dtype))
        else:
            return {"error": f"unknown op {op!r}"}, []
        return {}, []


# -- the worker process ----------------------------------------------------------------------------
BLAS_CHOICES = ("auto", "openblas", "numpy")


def bundled_openblas():
    """The OpenBLAS shared library that scipy's wheel bundles in this environment, or None."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = os.path.join(os.path.dirname(list(spec.submodule_search_locations)[0]), "scipy.libs")
    found = sorted(f for f in (os.listdir(libs) if os.path.isdir(libs) else []) if f.startswith("libopenblas"))
    return os.path.join(libs, found[0]) if found else None


def blas_ldflags(choice: str) -> str:
    """Theano's ``blas__ldflags`` for a BLAS choice: "numpy", none (BLAS through numpy's C API: slow for the
    transposed GEMM of the update); "openblas", scipy's bundled OpenBLAS linked in as a real Theano install
    would (6x faster at batch 10 here); "auto", "openblas" where it exists, else "numpy"."""
    if choice not in BLAS_CHOICES:
        raise ValueError(f"blas must be one of {BLAS_CHOICES}, got {choice!r}")
    lib = None if choice == "numpy" else bundled_openblas()
    if lib is None:
        if choice == "openblas":
            raise RuntimeError("blas='openblas' but scipy in this environment bundles no OpenBLAS")
        return ""
    folder = os.path.dirname(lib)
    # THEANO_FLAGS is split on commas; a backslash keeps the ones the linker option needs
    return f"-L{folder} -l:{os.path.basename(lib)} -Wl\\,-rpath\\,{folder}"


def _die_with_parent(poll_s: float = 0.5) -> None:
    """Exit as soon as the parent is gone, even mid-compile (end of stdin covers the idle case)."""
    def watch(parent=os.getppid()):
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _serve(inp, out) -> None:
    requests = iter(lambda: read_message(inp), None)  # until the pipe closes
    header, arrays = next(requests, ({"op": None}, []))
    if header["op"] is None:
        return
    if header.get("op") != "init":
        write_message(out, {"error": f"the first request must be 'init', got {header.get('op')!r}"})
        return
    try:
        # set before Theano is imported, which is when it reads its flags; flags already in the
        # environment come after, so a user's own blas__ldflags still wins
        flags = "blas__ldflags=" + blas_ldflags(header.get("blas", "auto"))
        os.environ["THEANO_FLAGS"] = flags + "," + os.environ.get("THEANO_FLAGS", "")
        import theano
        import theano.tensor as T

        graph = SGDGraph(theano, T, T.nnet.sigmoid, zip(arrays[0::2], arrays[1::2]), header["dtype"])
    except Exception:
        write_message(out, {"error": traceback.format_exc()})
        return
    write_message(out, {"ok": True, "theano": theano.__version__, "numpy": np.__version__,
                        "floatX": theano.config.floatX, "blas": theano.config.blas__ldflags})
    for header, arrays in requests:
        if header.get("op") == "close":
            write_message(out, {})
            return
        try:
            reply = graph.answer(header, arrays)
        except Exception:
            reply = {"error": traceback.format_exc()}, []
        write_message(out, *reply)


def main() -> None:
    # The protocol owns the real stdout; anything else that prints (Theano's warnings, the C compiler)
    # goes to stderr so it can never corrupt a message.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _die_with_parent()
    with contextlib.suppress(BrokenPipeError, EOFError):  # the parent went away mid-message: nothing to answer
        _serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
