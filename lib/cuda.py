"""Backpropagation as five CUDA kernels written with numba.cuda (seed 001 §4).

The paper decomposes one minibatch step into five kernels, and so do we:

  1. ``forward_layer``   A_l = σ(A_{l-1} W_l + b_l)            tiled matmul, registers seeded with b (eq. 6)
  2. ``output_delta``    Δ_L = 2/B (A_L - Y) ∘ A_L(1 - A_L)     and the loss, reduced per block (eq. 7)
  3. ``backward_delta``  Δ_{l-1} = Δ_l W_l^T                     the same tiled matmul, B read transposed
  4. ``dsigmoid``        Δ_{l-1} ∘= A_{l-1}(1 - A_{l-1})        σ' from the stored activation (eq. 8)
  5. ``update_layer``    W_l += α A_{l-1}^T Δ_l, b_l += α Σ Δ_l  per-example outer products summed over the
                                                              batch, α = -lr (eq. 9; the 1/B is in Δ_L)

Layout: one example per row, every array row-major, W_l of shape (n_{l-1}, n_l), so ``Z = A @ W + b`` as in
``reference.py`` (the paper stored activations column-major). The three products share one kernel template,
``_matmul_kernel``, tiled through shared memory with an r × r register block per thread (r = ``reg_block``; 1
is the paper's kernel); threads past a matrix's edge are the slides' idle threads. The update (few output tiles,
a long reduction over the batch) is split over blocks whose partial sums meet by atomic adds (``split_for``).

Each kernel is a module-level launcher taking device arrays, so a test can run it alone, also on numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``), which the trainer uses only when asked (``simulator=True``).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import config, cuda, float64, from_dtype

from .base import Trainer, TrainerUnavailable
from .cli import check_choice

TILES = (8, 16, 32)        # threads per block edge and depth of a shared-memory tile
REG_BLOCKS = (1, 2, 4, 8)  # outputs per thread along each axis (register blocking)
MAX_SHARED = 48 * 1024     # static shared memory per block that every CUDA GPU grants
REDUCE_THREADS = 256       # threads per block of the loss reduction (a power of two)
REDUCE_BLOCKS = 64         # at most this many partial sums of the loss per step


def simulator_enabled() -> bool:
    """True when numba runs CUDA kernels on its simulator (NUMBA_ENABLE_CUDASIM=1 at numba's import)."""
    return bool(config.ENABLE_CUDASIM)


def check_layout(tile: int, reg_block: int, dtype="float32") -> tuple[int, int]:
    """Validate the kernel geometry; returns (tile, reg_block) or raises ValueError naming the valid choices."""
    check_choice("tile", tile, TILES)
    check_choice("reg_block", reg_block, REG_BLOCKS)
    shared = 2 * tile * (tile * reg_block + 1) * np.dtype(dtype).itemsize  # two tile × (tile·r + 1) tiles, see below
    if shared > MAX_SHARED:
        raise ValueError(f"tile={tile}, reg_block={reg_block} in {np.dtype(dtype)} needs {shared} bytes of shared "
                         f"memory per block, more than the {MAX_SHARED} every GPU grants; use a smaller tile "
                         f"or reg_block")
    return tile, reg_block


# -- Kernel 1, 3 and 5: one tiled matrix product, three epilogues ----------------------------------
FORWARD, DELTA, UPDATE = "forward", "delta", "update"


@functools.lru_cache(maxsize=None)
def _matmul_kernel(kind: str, tile: int, reg_block: int, dtype: str):
    """Compile-time specialization of the tiled product ``out = op(A) @ op(B)`` for one ``kind``:

      forward  C[m, n] = σ(b[n] + Σ_k A[m, k] B[k, n])      A = A_{l-1} (B×n_in), B = W (n_in×n_out)
      delta    C[m, n] = Σ_k A[m, k] B[n, k]                A = Δ_l (B×n_l),      B = W_l (n_{l-1}×n_l)
      update   C[m, n] += α Σ_k A[k, m] B[k, n], m < M      A = A_{l-1} (B×n_in), B = Δ_l (B×n_out), C = W
               b[n]    += α Σ_k 1 · B[k, n]                 the bias as one extra row of ones in A^T
                                                            (the paper embeds b in W the same way)

    Shapes, the tile and the register block are baked in as constants, which is what lets the compiler
    keep the r × r accumulators in registers (every index into them is known after unrolling).
    """
    T, R = tile, reg_block
    BM = BN = T * R        # output rows and columns per block
    NT = T * T             # threads per block
    A_TILE, B_TILE = (T, BM + 1), (T, BN + 1)  # shared shapes must be constants, so they are computed here
    nb = from_dtype(np.dtype(dtype))
    ZERO, ONE = np.dtype(dtype).type(0), np.dtype(dtype).type(1)
    # An operand whose rows run along k (A in forward/delta, W in delta) is read along k by consecutive
    # threads, so global loads stay coalesced, and written into shared memory transposed, so the inner
    # loop reads it along m (or n). The transposed store is where bank conflicts would come from: each
    # shared row is padded by one element, which puts consecutive k into consecutive banks.
    A_ALONG_K = kind != UPDATE
    B_ALONG_K = kind == DELTA
    IS_FORWARD, IS_DELTA = kind == FORWARD, kind == DELTA  # plain booleans: the kernel compares no strings
    # One multiprocessor has 64K registers: a block of 1024 threads must make do with 64 each, or its
    # launch fails. (The simulator's jit takes no such option.)
    jit_options = {} if simulator_enabled() else {"max_registers": min(255, 65536 // NT)}

    @cuda.jit(device=True)
    def tile_slot(flat, along_k, width):
        """(k, row or column) of a tile's element ``flat``: along k, consecutive threads take consecutive k."""
        return (flat % T, flat // T) if along_k else (flat // width, flat % width)

    @cuda.jit(**jit_options)
    def kernel(A, B, C, bias, alpha):
        As = cuda.shared.array(A_TILE, nb)   # As[k, i] = op(A)[m0 + i, k0 + k]
        Bs = cuda.shared.array(B_TILE, nb)   # Bs[k, j] = op(B)[k0 + k, n0 + j]
        acc = cuda.local.array((R, R), nb)
        a = cuda.local.array(R, nb)
        b = cuda.local.array(R, nb)

        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * T + tx
        m0, n0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        M, N = C.shape
        K = A.shape[1] if A_ALONG_K else A.shape[0]
        # Split-K (update only): block z sums examples [k_begin, k_end); partial sums meet by atomic adds.
        chunk = (K + cuda.gridDim.z - 1) // cuda.gridDim.z
        k_begin = cuda.blockIdx.z * chunk
        k_end = min(K, k_begin + chunk)

        # Thread (ty, tx) owns outputs (m0 + ty + i·T, n0 + tx + j·T): strided, so a warp's threads touch
        # consecutive columns (coalesced stores) and consecutive shared-memory words (no bank conflicts).
        for i in range(R):
            for j in range(R):
                acc[i, j] = ZERO
        if IS_FORWARD:  # eq. 6: the registers start from the bias
            for j in range(R):
                n = n0 + tx + j * T
                if n < N:
                    for i in range(R):
                        acc[i, j] = bias[n]

        for k0 in range(k_begin, k_end, T):
            # All NT threads load the BM × T tile of op(A) and the T × BN tile of op(B), R elements each.
            for p in range(R):
                flat = tid + p * NT
                kk, i = tile_slot(flat, A_ALONG_K, BM)
                m, k = m0 + i, k0 + kk
                v = ZERO
                if k < k_end:
                    if m < M:
                        v = A[m, k] if A_ALONG_K else A[k, m]
                    elif m == M and not A_ALONG_K:  # the update's bias row of ones
                        v = ONE
                As[kk, i] = v
                kk, j = tile_slot(flat, B_ALONG_K, BN)
                n, k = n0 + j, k0 + kk
                Bs[kk, j] = (B[n, k] if B_ALONG_K else B[k, n]) if n < N and k < k_end else ZERO
            cuda.syncthreads()
            # Each k: R + R shared loads feed R·R multiply-adds (the point of register blocking).
            for kk in range(T):
                for i in range(R):
                    a[i] = As[kk, ty + i * T]
                for j in range(R):
                    b[j] = Bs[kk, tx + j * T]
                for i in range(R):
                    for j in range(R):
                        acc[i, j] += a[i] * b[j]
            cuda.syncthreads()

        for i in range(R):
            m = m0 + ty + i * T
            for j in range(R):
                n = n0 + tx + j * T
                if n < N and m < M:
                    if IS_FORWARD:  # the activation is applied before the store (eq. 6)
                        C[m, n] = ONE / (ONE + math.exp(-acc[i, j]))
                    elif IS_DELTA:
                        C[m, n] = acc[i, j]
                    elif cuda.gridDim.z > 1:  # several blocks add into the same weight
                        cuda.atomic.add(C, (m, n), alpha * acc[i, j])
                    else:
                        C[m, n] += alpha * acc[i, j]
                elif n < N and m == M and not (IS_FORWARD or IS_DELTA):  # the update's bias row
                    if cuda.gridDim.z > 1:
                        cuda.atomic.add(bias, n, alpha * acc[i, j])
                    else:
                        bias[n] += alpha * acc[i, j]

    return kernel


def _blocks(n: int, per_block: int) -> int:
    return (n + per_block - 1) // per_block


def _launch_matmul(kind, A, B, C, bias, alpha, rows, tile, reg_block, split=1):
    check_layout(tile, reg_block, C.dtype)
    if not (A.dtype == B.dtype == C.dtype == bias.dtype):
        raise TypeError(f"all arrays must share one dtype, got {A.dtype}, {B.dtype}, {C.dtype}, {bias.dtype}")
    per_block = tile * reg_block
    grid = (_blocks(C.shape[1], per_block), _blocks(rows, per_block), split)
    _matmul_kernel(kind, tile, reg_block, C.dtype.name)[grid, (tile, tile)](A, B, C, bias, C.dtype.type(alpha))


def forward_layer(A, W, b, out, tile=16, reg_block=4):
    """Kernel 1: ``out = σ(A @ W + b)`` (eq. 6). A (B, n_in), W (n_in, n_out), b (n_out,), out (B, n_out)."""
    _check_shapes("forward_layer", A=(A, ("B", "i")), W=(W, ("i", "o")), b=(b, ("o",)), out=(out, ("B", "o")))
    _launch_matmul(FORWARD, A, W, out, b, 0.0, out.shape[0], tile, reg_block)


def backward_delta(D, W, out, tile=16, reg_block=4):
    """Kernel 3: ``out = D @ W.T``, the delta pulled back through W (eq. 8 before σ'), W read in place (no copy)."""
    _check_shapes("backward_delta", D=(D, ("B", "o")), W=(W, ("i", "o")), out=(out, ("B", "i")))
    _launch_matmul(DELTA, D, W, out, W[0], 0.0, out.shape[0], tile, reg_block)  # W[0]: an unused bias


def update_layer(W, b, A, D, alpha, tile=16, reg_block=4, split=1):
    """Kernel 5: ``W += alpha * A.T @ D`` and ``b += alpha * D.sum(0)`` in place (eq. 9 with alpha = -lr): the
    per-example outer products summed over the batch, in ``split`` chunks whose blocks add into W atomically."""
    _check_shapes("update_layer", W=(W, ("i", "o")), b=(b, ("o",)), A=(A, ("B", "i")), D=(D, ("B", "o")))
    if not (isinstance(split, int) and 1 <= split <= A.shape[0]):
        raise ValueError(f"split must be an integer from 1 to the batch size {A.shape[0]}, got {split!r}")
    _launch_matmul(UPDATE, A, D, W, b, alpha, W.shape[0] + 1, tile, reg_block, split)


def _check_shapes(kernel, **arrays):
    """Every named dimension must agree across the arrays (a wrong shape would read out of bounds)."""
    seen = {}
    for name, (arr, dims) in arrays.items():
        if len(arr.shape) != len(dims):
            raise ValueError(f"{kernel}: {name} must be {len(dims)}-D, got shape {arr.shape}")
        for d, size in zip(dims, arr.shape):
            if seen.setdefault(d, (size, name))[0] != size:
                raise ValueError(f"{kernel}: {name} has shape {arr.shape}, which disagrees with {seen[d][1]}")


# -- Kernels 2 and 4: elementwise ------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _elementwise_kernels(dtype: str):
    ONE = np.dtype(dtype).type(1)

    @cuda.jit
    def output_delta_kernel(A, Y, D, partials, scale):
        # D = scale (A - Y) ∘ A(1 - A), and each block's share of Σ (A - Y)² (in float64) for the loss.
        # Partial sums instead of one atomic counter: deterministic, and no counter to reset every step.
        total = cuda.shared.array(REDUCE_THREADS, float64)
        rows, cols = A.shape
        s = 0.0
        for idx in range(cuda.grid(1), rows * cols, cuda.gridsize(1)):
            r, c = idx // cols, idx % cols
            a = A[r, c]
            e = a - Y[r, c]
            D[r, c] = scale * e * a * (ONE - a)
            s += e * e
        t = cuda.threadIdx.x
        total[t] = s
        cuda.syncthreads()
        width = REDUCE_THREADS // 2
        while width > 0:  # tree reduction in shared memory
            if t < width:
                total[t] += total[t + width]
            cuda.syncthreads()
            width //= 2
        if t == 0:
            partials[cuda.blockIdx.x] = total[0]

    @cuda.jit
    def dsigmoid_kernel(D, A):
        # D ∘= σ'(Z) = A(1 - A): the sigmoid's derivative from its stored output, no exp recomputed (§4).
        c, r = cuda.grid(2)  # x runs along a row: a warp reads consecutive addresses
        if r < D.shape[0] and c < D.shape[1]:
            a = A[r, c]
            D[r, c] *= a * (ONE - a)

    return output_delta_kernel, dsigmoid_kernel


def reduce_blocks(batch: int, n_out: int) -> int:
    """How many blocks (and partial sums) ``output_delta`` uses for a (batch, n_out) output."""
    return max(1, min(REDUCE_BLOCKS, _blocks(batch * n_out, REDUCE_THREADS)))


def output_delta(A, Y, D, partials):
    """Kernel 2: ``D = 2/B (A - Y) ∘ A(1 - A)`` (eq. 7). ``partials`` (float64, ``reduce_blocks(B, n_out)``)
    receives per-block sums of (A - Y)²: the loss is ``partials.sum() / B``, summed on the host."""
    _check_shapes("output_delta", A=(A, ("B", "o")), Y=(Y, ("B", "o")), D=(D, ("B", "o")))
    blocks = reduce_blocks(*A.shape)
    if partials.shape != (blocks,) or partials.dtype != np.float64:
        raise ValueError(f"output_delta: partials must be float64 of shape ({blocks},), "
                         f"got {partials.dtype} {partials.shape}")
    kernel, _ = _elementwise_kernels(A.dtype.name)
    kernel[blocks, REDUCE_THREADS](A, Y, D, partials, A.dtype.type(2.0 / A.shape[0]))


def dsigmoid(D, A):
    """Kernel 4: ``D *= A * (1 - A)`` in place: the Hadamard product with σ' (eq. 8)."""
    _check_shapes("dsigmoid", D=(D, ("B", "n")), A=(A, ("B", "n")))
    _, kernel = _elementwise_kernels(D.dtype.name)
    kernel[(_blocks(D.shape[1], 32), _blocks(D.shape[0], 8)), (32, 8)](D, A)


def check_kernels(batch: int = 7, n_in: int = 37, n_out: int = 53, layouts=((8, 1), (8, 4)), seed: int = 0,
                  A=None):
    """Each kernel launched alone against numpy in float64, on random operands or ``A`` as the input (e.g. MNIST
    images): one row per (kernel, config, e.g. each of ``layouts``) with ``max |error|`` and ``max |value|``."""
    import pandas as pd

    from .reference import mse_loss

    rng = np.random.default_rng(seed)
    f32 = lambda *s, scale=1.0: (scale * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    A = f32(batch, n_in) if A is None else np.ascontiguousarray(A, np.float32)
    batch, n_in = A.shape
    W, b, D = f32(n_in, n_out, scale=0.3), f32(n_out), f32(batch, n_out)
    rows = []

    def record(kernel, config, got, want):
        rows.append((kernel, config, float(np.abs(got - want).max()), float(np.abs(want).max())))

    outer = sum(np.outer(A[i], D[i]) for i in range(batch)).astype(float)  # eq. 9, example by example
    for tile, r in layouts:
        config = f"tile={tile} r={r}"
        out = cuda.device_array((batch, n_out), np.float32)
        forward_layer(cuda.to_device(A), cuda.to_device(W), cuda.to_device(b), out, tile, r)
        record("1 forward_layer", config, out.copy_to_host(), sig(A.astype(float) @ W + b))

        out = cuda.device_array((batch, n_in), np.float32)
        backward_delta(cuda.to_device(D), cuda.to_device(W), out, tile, r)
        record("3 backward_delta", config, out.copy_to_host(), D.astype(float) @ W.T)

        for split in ((1,) if r == 1 else (1, 3)):
            dW, db = cuda.to_device(W), cuda.to_device(b)
            update_layer(dW, db, cuda.to_device(A), cuda.to_device(D), -0.5, tile, r, split=split)
            record("5 update_layer", f"{config} split={split}", np.r_[dW.copy_to_host().ravel(), db.copy_to_host()],
                   np.r_[(W - 0.5 * outer).ravel(), b - 0.5 * D.sum(0)])

    Aout, Y = sig(f32(batch, 5)).astype(np.float32), np.eye(5, dtype=np.float32)[np.arange(batch) % 5]
    dD, partials = cuda.device_array((batch, 5), np.float32), cuda.device_array(reduce_blocks(batch, 5), np.float64)
    output_delta(cuda.to_device(Aout), cuda.to_device(Y), dD, partials)
    record("2 output_delta", "Δ_L", dD.copy_to_host(), 2 / batch * (Aout - Y) * Aout * (1 - Aout))
    record("2 output_delta", "loss", partials.copy_to_host().sum() / batch, mse_loss(Aout, Y))

    Ah = sig(f32(batch, n_out)).astype(np.float32)
    dD = cuda.to_device(D)
    dsigmoid(dD, cuda.to_device(Ah))
    record("4 dsigmoid", "", dD.copy_to_host(), D * Ah * (1 - Ah))
    return pd.DataFrame(rows, columns=["kernel", "config", "max |error|", "max |value|"])


# -- The trainer -----------------------------------------------------------------------------------
def split_for(n_in: int, n_out: int, batch: int, tile: int, reg_block: int, sms: int) -> int:
    """How many chunks of the batch the update splits into (1 if ``sms`` = 0, the simulator): about 8 blocks per
    multiprocessor (the last partial wave costs little), each chunk 8 tiles of examples deep or more (few atomics)."""
    per_block = tile * reg_block
    blocks = _blocks(n_out, per_block) * _blocks(n_in + 1, per_block)
    return max(1, min(_blocks(8 * sms, blocks), batch // (8 * tile)))


def launch_geometry(sizes, batch: int, tile: int = 16, reg_block: int = 4, sms: int = 0) -> list[dict]:
    """The matmul launches of one step as the trainer makes them (``sms`` > 0: its split of the update), computed.
    ``idle``: the share of launched output slots outside the matrix (the slides' "widths not a multiple of 32")."""
    check_layout(tile, reg_block)
    per = tile * reg_block
    out = []

    def launch(kernel, layer, rows, cols, k, split=1):
        grid = (_blocks(cols, per), _blocks(rows, per), split)
        out.append({"kernel": kernel, "layer": layer, "out_rows": rows, "out_cols": cols, "reduce": k,
                    "grid": grid, "blocks": grid[0] * grid[1] * split, "threads_per_block": tile * tile,
                    "idle": 1 - rows * cols / (grid[0] * grid[1] * per * per), "flops": 2 * rows * cols * k})

    layers = list(enumerate(zip(sizes[:-1], sizes[1:]), start=1))
    for l, (n_in, n_out) in layers:
        launch("forward_layer", l, batch, n_out, n_in)
    for l, (n_in, n_out) in reversed(layers):
        if l > 1:
            launch("backward_delta", l, batch, n_in, n_out)
        launch("update_layer", l, n_in + 1, n_out, batch,  # + 1: the bias row
               split_for(n_in, n_out, batch, tile, reg_block, sms))
    return out


class NumbaCudaTrainer(Trainer):
    """The paper's five kernels, float32 by default. Options: ``tile`` (TILES), ``reg_block`` (REG_BLOCKS; 1 is
    the paper's kernel), ``simulator`` (run on numba's CUDA simulator, already enabled: tests and notebooks)."""

    name = "numba-cuda"
    device, family = "gpu", "cuda"
    options = {"tile": 16, "reg_block": 4, "simulator": False}

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if simulator_enabled():
            return False, ("no CUDA GPU: numba is running its CUDA simulator (NUMBA_ENABLE_CUDASIM=1), "
                           "which is for tests; pass simulator=True to run on it anyway")
        if not cuda.is_available():
            return False, "no CUDA GPU (numba.cuda.is_available() is False: no NVIDIA driver or device)"
        return True, ""

    def __init__(self, *args, simulator: bool = False, **kwargs):
        if simulator:
            if not simulator_enabled():
                raise TrainerUnavailable("simulator=True needs numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 "
                                         "before numba is first imported (this process has numba on the real CUDA "
                                         "target)")
            # Asked for by name, the simulator stands in for the GPU: shadow the class-level check.
            self.availability = lambda: (True, "")
        super().__init__(*args, simulator=bool(simulator), **kwargs)

    def _setup(self, params):
        self.tile, self.reg_block = check_layout(self.opts["tile"], self.opts["reg_block"], self.dtype)
        # The simulator has no multiprocessors to fill; no split there keeps its Python threads few.
        self._sms = 0 if simulator_enabled() else cuda.get_current_device().MULTIPROCESSOR_COUNT
        self._W = [cuda.to_device(W) for W, _ in params]
        self._b = [cuda.to_device(b) for _, b in params]

    def _make_buffers(self, B: int) -> dict:
        """Device buffers for batch size B: X, Y, every A_l and Δ_l, the loss partials."""
        return {"A": [cuda.device_array((B, n), self.dtype) for n in self.sizes],  # A[0] is X
                "Y": cuda.device_array((B, self.n_out), self.dtype),
                "D": [None] + [cuda.device_array((B, n), self.dtype) for n in self.sizes[1:]],
                "partials": cuda.device_array(reduce_blocks(B, self.n_out), np.float64),
                "split": [split_for(n_in, n_out, B, self.tile, self.reg_block, self._sms)
                          for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:])]}

    def _forward(self, X) -> dict:
        buf = self._batch_buffers(X.shape[0])
        buf["A"][0].copy_to_device(X)
        for l, (W, b) in enumerate(zip(self._W, self._b)):
            forward_layer(buf["A"][l], W, b, buf["A"][l + 1], self.tile, self.reg_block)
        return buf

    def _backward(self, buf, Y, targets, alpha) -> float:
        """Kernels 2-5: adds ``alpha ×`` the gradients into ``targets``; returns the loss (waiting for the device)."""
        A, D = buf["A"], buf["D"]
        buf["Y"].copy_to_device(Y)
        output_delta(A[-1], buf["Y"], D[-1], buf["partials"])
        for l in range(len(self._W) - 1, -1, -1):
            if l > 0:  # Δ for the layer below first: it needs W_l before the update changes it
                backward_delta(D[l + 1], self._W[l], D[l], self.tile, self.reg_block)
                dsigmoid(D[l], A[l])
            W, b = targets[l]
            update_layer(W, b, A[l], D[l + 1], alpha, self.tile, self.reg_block, buf["split"][l])
        return float(buf["partials"].copy_to_host().sum()) / Y.shape[0]

    def _step(self, X, Y, lr):
        return self._backward(self._forward(X), Y, list(zip(self._W, self._b)), -lr)

    def _gradients(self, X, Y):
        grads = [(cuda.to_device(np.zeros(W.shape, self.dtype)), cuda.to_device(np.zeros(b.shape, self.dtype)))
                 for W, b in zip(self._W, self._b)]
        loss = self._backward(self._forward(X), Y, grads, 1.0)
        return loss, [(gW.copy_to_host(), gb.copy_to_host()) for gW, gb in grads]

    def _apply_gradients(self, grads, lr):
        # For data-parallel workers, not the hot path: a round trip through the host keeps it obvious.
        for W, b, (gW, gb) in zip(self._W, self._b, grads):
            W.copy_to_device(W.copy_to_host() - self.dtype.type(lr) * np.asarray(gW, self.dtype))
            b.copy_to_device(b.copy_to_host() - self.dtype.type(lr) * np.asarray(gb, self.dtype))

    def _get_params(self):
        return [(W.copy_to_host(), b.copy_to_host()) for W, b in zip(self._W, self._b)]

    def _set_params(self, params):
        for W, b, (hW, hb) in zip(self._W, self._b, params):
            W.copy_to_device(np.ascontiguousarray(hW))
            b.copy_to_device(np.ascontiguousarray(hb))

    def _predict(self, X):
        return self._forward(X)["A"][-1].copy_to_host()

    def close(self):
        self._W, self._b, self._buffers = [], [], {}  # numba frees device memory with the last reference
