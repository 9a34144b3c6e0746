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
    header = dict(header, arrays=[[a.dtype.str, list(a.shape)] for a in arrays])
    head = json.dumps(header).encode()
    stream.write(_LEN.pack(len(head)))
    stream.write(head)
    for a in arrays:
        if a.size:
            stream.write(memoryview(a.reshape(-1)).cast("B"))  # a view: no copy of big batches
    stream.flush()


def _read_exactly(stream, n: int):
    """n bytes from the stream, or None at a clean end of stream (the other side is gone)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            if got == 0:
                return None
            raise EOFError(f"stream ended after {got} of {n} bytes")
        got += k
    return buf


def read_message(stream):
    """(header, arrays), or None when the other side closed the stream."""
    raw = _read_exactly(stream, _LEN.size)
    if raw is None:
        return None
    (n,) = _LEN.unpack(raw)
    header = json.loads(bytes(_read_exactly(stream, n) or b""))
    arrays = []
    for dtype, shape in header.pop("arrays"):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = _read_exactly(stream, nbytes) if nbytes else bytearray()
        if data is None:
            raise EOFError("stream ended inside a message")
        arrays.append(np.frombuffer(data, dtype=dtype).reshape(shape))
    return header, arrays


# -- the graph -------------------------------------------------------------------------------------
class SGDGraph:
    """The study's network as Theano-API graphs (``theano`` or ``pytensor``, its tensor module ``T`` and sigmoid
    op): shared parameters, and one compiled SGD step whose updates rewrite them in place, as a Theano user
    would write it: loss = 1/B Σ ||Y - A_L||², grads = T.grad(loss, params), p <- p - lr * g."""

    def __init__(self, theano, T, sigmoid, params, dtype: str, mode=None):
        self.theano, self.T, self.mode = theano, T, mode
        X, Y = T.matrix("X", dtype=dtype), T.matrix("Y", dtype=dtype)
        lr = T.scalar("lr", dtype=dtype)
        self.shared = []
        for l, (W, b) in enumerate(params):
            self.shared += [theano.shared(np.array(W, dtype=dtype), name=f"W{l}"),
                            theano.shared(np.array(b, dtype=dtype), name=f"b{l}")]
        A = X
        for W, b in zip(self.shared[0::2], self.shared[1::2]):
            A = sigmoid(T.dot(A, W) + b)
        # cast B so that float32 graphs stay float32 (X.shape[0] is int64, which would upcast)
        loss = T.sum((Y - A) ** 2) / T.cast(X.shape[0], dtype)
        grads = theano.grad(loss, self.shared)
        self._inputs, self._loss, self._grads = (X, Y), loss, grads
        updates = [(p, p - lr * g) for p, g in zip(self.shared, grads)]
        self.step = theano.function([X, Y, lr], loss, updates=updates, mode=mode)
        self.predict = theano.function([X], A, mode=mode)
        self._gradients = None  # compiled on first use: most runs never need it

    def gradients(self, X, Y):
        """(loss, [dW0, db0, dW1, ...]) without updating."""
        if self._gradients is None:
            self._gradients = self.theano.function(list(self._inputs), [self._loss, *self._grads], mode=self.mode)
        loss, *grads = self._gradients(X, Y)
        return float(loss), grads

    def apply_gradients(self, grads, lr):
        for p, g in zip(self.shared, grads):
            p.set_value(p.get_value(borrow=True) - np.asarray(lr, dtype=g.dtype) * g)

    def get_params(self):
        return [p.get_value() for p in self.shared]  # copies

    def set_params(self, flat):
        for p, v in zip(self.shared, flat):
            p.set_value(np.array(v, dtype=p.dtype))


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
    parent = os.getppid()

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(poll_s)

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

        dtype = header["dtype"]
        graph = SGDGraph(theano, T, T.nnet.sigmoid, zip(arrays[0::2], arrays[1::2]), dtype)
    except Exception:
        write_message(out, {"error": traceback.format_exc()})
        return
    write_message(out, {"ok": True, "theano": theano.__version__, "numpy": np.__version__,
                        "floatX": theano.config.floatX, "blas": theano.config.blas__ldflags})
    for header, arrays in requests:
        op = header.get("op")
        try:
            if op == "step":
                X, Y = arrays
                write_message(out, {"loss": float(graph.step(X, Y, np.asarray(header["lr"], dtype=dtype)))})
            elif op == "predict":
                write_message(out, {}, [graph.predict(arrays[0])])
            elif op == "get_params":
                write_message(out, {}, graph.get_params())
            elif op == "set_params":
                graph.set_params(arrays)
                write_message(out, {})
            elif op == "gradients":
                loss, grads = graph.gradients(*arrays)
                write_message(out, {"loss": loss}, grads)
            elif op == "apply_gradients":
                graph.apply_gradients(arrays, header["lr"])
                write_message(out, {})
            elif op == "close":
                write_message(out, {})
                return
            else:
                write_message(out, {"error": f"unknown op {op!r}"})
        except Exception:
            write_message(out, {"error": traceback.format_exc()})


def main() -> None:
    # The protocol owns the real stdout; anything else that prints (Theano's warnings, the C compiler)
    # goes to stderr so it can never corrupt a message.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _die_with_parent()
    try:
        _serve(sys.stdin.buffer, out)
    except (BrokenPipeError, EOFError):
        pass  # the parent went away mid-message: nothing left to answer


if __name__ == "__main__":
    main()
