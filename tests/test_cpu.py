"""The CPU trainers against the float64 reference, each other, and bad input (tiny nets: fast)."""
import threading

import numpy as np
import pytest

from parbp import blas, cpu, reference, trainers

N_IN, N_OUT, NET = 53, 7, [37, 29]
B = 23  # odd, so the examples split unevenly across workers

# (name, options): every CPU trainer, the parallel ones at several worker counts
SYNCHRONOUS = [
    ("serial-example", {}),
    ("serial-blas", {}),
    ("threads", {"threads": 1}),
    ("threads", {"threads": 2}),
    ("threads", {"threads": 3}),
    ("threads", {"threads": 2, "update": "partials"}),  # the paper's reduction of partial gradients
    ("threads", {"threads": 3, "update": "partials"}),
    ("blas-parallel", {"threads": 1}),
    ("blas-parallel", {"threads": 2}),
    ("hybrid", {"groups": 2, "threads": 2}),
    ("hybrid", {"groups": 2, "threads": 4}),  # two groups of two BLAS threads
    ("hybrid", {"groups": 1, "threads": 2}),
    ("hogwild", {"threads": 1, "microbatch": B}),  # one worker, one microbatch: plain synchronous SGD
]
WITH_GRADIENTS = [c for c in SYNCHRONOUS if c[0] in ("serial-blas", "threads", "blas-parallel", "hybrid")]
ids = [f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items())}" for n, o in SYNCHRONOUS]


def batch(seed=1, n=B):
    rng = np.random.default_rng(seed)
    X = rng.random((n, N_IN)).astype(np.float32)
    Y = np.eye(N_OUT, dtype=np.float32)[rng.integers(0, N_OUT, n)]
    return X, Y


def make(name, **options):
    return trainers.make(name, net=NET, n_in=N_IN, n_out=N_OUT, seed=3, **options)


def assert_params_close(got, want, atol):
    assert len(got) == len(want)
    for l, ((W, b), (W_ref, b_ref)) in enumerate(zip(got, want)):
        np.testing.assert_allclose(W, W_ref, rtol=0, atol=atol, err_msg=f"layer {l} W")
        np.testing.assert_allclose(b, b_ref, rtol=0, atol=atol, err_msg=f"layer {l} b")


@pytest.mark.parametrize("name, options", SYNCHRONOUS, ids=ids)
def test_one_step_equals_reference(name, options):
    X, Y = batch()
    ref = make("reference")
    ref_loss = ref.step(X, Y, 0.5)
    with make(name, **options) as t:
        assert t.dtype == np.float32
        loss = t.step(X, Y, 0.5)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert_params_close(t.params, ref.params, atol=2e-6)


@pytest.mark.parametrize("name, options", SYNCHRONOUS, ids=ids)
def test_five_steps_equal_serial_blas(name, options):
    with make("serial-blas") as base, make(name, **options) as t:
        for step in range(5):
            X, Y = batch(seed=10 + step)
            base.step(X, Y, 0.3)
            t.step(X, Y, 0.3)
        assert_params_close(t.params, base.params, atol=1e-5)


@pytest.mark.parametrize("name, options", WITH_GRADIENTS, ids=[f"{n}-{o}" for n, o in WITH_GRADIENTS])
def test_gradients_equal_reference_and_apply_equals_step(name, options):
    X, Y = batch()
    ref = make("reference")
    ref_loss, ref_grads = ref.gradients(X, Y)
    with make(name, **options) as t, make(name, **options) as stepped:
        loss, grads = t.gradients(X, Y)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert_params_close(grads, ref_grads, atol=1e-6)
        t.apply_gradients(grads, 0.5)
        stepped.step(X, Y, 0.5)
        assert_params_close(t.params, stepped.params, atol=1e-6)


def test_float64_matches_reference_to_rounding():
    X, Y = batch()
    ref = make("reference")
    ref.step(X, Y, 0.5)
    for name in ("serial-example", "serial-blas", "threads"):
        with make(name, dtype="float64") as t:
            t.step(X, Y, 0.5)
            assert_params_close(t.params, ref.params, atol=1e-12)


def test_predict_and_params_round_trip():
    X, _ = batch(n=300)
    ref = make("reference")
    want = ref.predict(X)
    for name in ("serial-example", "serial-blas", "threads", "blas-parallel", "hybrid", "hogwild"):
        with make(name) as t:
            np.testing.assert_allclose(t.predict(X), want, atol=2e-6)
            params = [(W + 0.25, b - 0.5) for W, b in t.params]
            t.params = params
            assert_params_close(t.params, params, atol=0)


TINY = np.finfo(np.float32).tiny  # float32's smallest normal number, 2**-126 ≈ 1.18e-38


def sigmoid_inputs():
    """The usual range, and a fine grid where σ(z) crosses float32's smallest normal (z ≈ −87.34) down
    to where even its subnormals end (z ≈ −103.3), plus the edges of the exp polynomial's clamp."""
    return np.concatenate([np.linspace(-120, 120, 20001), np.linspace(-103.5, -87.0, 4001),
                           [0.0, -1e-8, 1e-8, 88.5, -88.5, -87.0, 88.0, -87.3365, -87.3366]]).astype(np.float32)


def check_sigmoid_semantics(z, out):
    """The stated semantics (parbp.cpu.sigmoid): σ(z) to float32 rounding where it is a normal float32,
    exactly 0 below; inside the rounding band around 2**-126, either — but never a subnormal."""
    want = reference.sigmoid(z.astype(np.float64))
    normal, below = want >= TINY * (1 + 1e-6), want < TINY * (1 - 1e-6)
    assert normal.sum() > 15000 and below.sum() > 3000  # both sides are really exercised
    np.testing.assert_allclose(out[normal], want[normal], rtol=1e-6, atol=0)
    assert not out[below].any(), f"nonzero below 2**-126 at z = {z[below][out[below] != 0][:5]}"
    assert not ((out > 0) & (out < TINY)).any(), "a subnormal result"


def test_fused_sigmoid_matches_float64():
    z = sigmoid_inputs()
    out = z[None, :].copy()
    cpu.bias_sigmoid(out, np.zeros(z.size, np.float32))
    check_sigmoid_semantics(z, out[0])


# LLVM targets whose code for the sigmoid differs (the Intel failure was skylake-avx512/sapphirerapids
# tuning: a reciprocal estimate), with the /proc/cpuinfo flags this CPU needs to run their code
CODEGEN_TARGETS = {"x86-64": [], "haswell": ["avx2", "fma"], "skylake-avx512": ["avx512f", "avx512bw", "avx512vl"],
                   "znver4": ["avx512f", "avx512bw", "avx512vl", "sse4a"],
                   "sapphirerapids": ["avx512f", "avx512bw", "avx512vl", "avx512_fp16", "amx_tile"]}


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def test_fused_sigmoid_is_the_same_for_every_cpu_target(tmp_path):
    """The kernel compiled by numba for each x86-64 CPU type this machine can run gives the stated semantics
    (numba compiles for the CPU it finds; NUMBA_CPU_NAME makes it compile for another one here)."""
    import os
    import platform
    import subprocess
    import sys

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 code generation only")
    flags = cpu_flags()
    targets = [t for t, need in CODEGEN_TARGETS.items() if set(need) <= flags]
    z = sigmoid_inputs()
    np.save(tmp_path / "z.npy", z)
    code = ("import sys, numpy as np; from parbp import cpu; z = np.load(sys.argv[1]); o = z[None].copy(); "
            "cpu.bias_sigmoid(o, np.zeros(z.size, np.float32)); np.save(sys.argv[2], o[0])")
    runs = {t: subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "z.npy"), str(tmp_path / f"{t}.npy")],
                                env={**os.environ, "NUMBA_CPU_NAME": t, "NUMBA_CACHE_DIR": str(tmp_path / t)},
                                stderr=subprocess.PIPE, text=True) for t in targets}
    for t, p in runs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{t}: {err[-2000:]}"
        check_sigmoid_semantics(z, np.load(tmp_path / f"{t}.npy"))


def test_more_workers_than_examples():
    X, Y = batch(n=2)
    ref = make("reference")
    ref.step(X, Y, 0.5)
    for name in ("threads", "hybrid", "hogwild"):
        with make(name, threads=6, **({"microbatch": 2} if name == "hogwild" else {})) as t:
            t.step(X, Y, 0.5)
            if name != "hogwild":  # hogwild with 2 workers on 2 examples is asynchronous, not equal
                assert_params_close(t.params, ref.params, atol=2e-6)


def test_kernels_release_the_gil():
    # the threads trainers run these from several Python threads at once: they must not hold the GIL
    for kernel in (cpu.bias_sigmoid, cpu.output_delta, cpu.hidden_delta, cpu.column_sums, cpu.bias_update,
                   cpu.reduce_update, blas.axpy, cpu.example_by_example_step):
        assert kernel.targetoptions.get("nogil") is True, kernel


def test_hogwild_lowers_the_loss():
    X, Y = batch(n=200)
    with make("hogwild", threads=2, microbatch=5) as t:
        before = reference.mse_loss(t.predict(X).astype(np.float64), Y)
        for _ in range(30):
            t.step(X, Y, 1.0)
        after = reference.mse_loss(t.predict(X).astype(np.float64), Y)
    assert after < 0.8 * before


def test_hogwild_has_no_whole_batch_gradient():
    with make("hogwild") as t:
        with pytest.raises(NotImplementedError, match="hogwild"):
            t.gradients(*batch())


@pytest.mark.parametrize("name, options, message", [
    ("threads", {"threads": 0}, "threads must be a positive integer"),
    ("threads", {"threads": -2}, "threads must be a positive integer"),
    ("threads", {"threads": 1.5}, "threads must be a positive integer"),
    ("threads", {"threads": True}, "threads must be a positive integer"),
    ("blas-parallel", {"threads": 0}, "threads must be a positive integer"),
    ("hybrid", {"groups": 0}, "groups must be a positive integer"),
    ("hybrid", {"threads": "2"}, "threads must be a positive integer"),
    ("hybrid", {"threads": 3, "groups": 2}, r"groups \(2\) must divide threads \(3\)"),
    ("hogwild", {"microbatch": 0}, "microbatch must be a positive integer"),
    ("serial-blas", {"threads": 2}, "unknown option"),
    ("threads", {"thread": 2}, "accepts: threads, update"),
    ("threads", {"update": "sum"}, r"update must be one of \('rows', 'partials'\)"),
    ("hybrid", {"update": None}, "update must be one of"),
])
def test_bad_options_raise(name, options, message):
    with pytest.raises(ValueError, match=message):
        make(name, **options)


@pytest.mark.parametrize("name", ["serial-example", "serial-blas", "threads", "hogwild"])
def test_bad_batches_raise(name):
    X, Y = batch()
    with make(name) as t:
        with pytest.raises(ValueError, match="0 rows"):
            t.step(X[:0], Y[:0], 0.1)
        with pytest.raises(ValueError, match="disagree on the batch size"):
            t.step(X, Y[:-1], 0.1)
        with pytest.raises(ValueError, match="X must have shape"):
            t.step(X[:, :-1], Y, 0.1)
        with pytest.raises(ValueError, match="learning rate"):
            t.step(X, Y, 0.0)


def test_bad_gradients_raise():
    with make("threads", threads=2) as t:
        assert (t.groups, t.blas) == (2, 1)
        _, grads = t.gradients(*batch())
        with pytest.raises(ValueError, match="expected 3 layers"):
            t.apply_gradients(grads[:2], 0.1)
        with pytest.raises(ValueError, match="layer 1"):
            t.apply_gradients([grads[0], (grads[1][0].T, grads[1][1]), grads[2]], 0.1)


def test_worker_layout():
    layouts = {
        ("threads", 3): (3, 1), ("blas-parallel", 3): (1, 3), ("hogwild", 2): (2, 1),
        ("hybrid", 1): (1, 1), ("hybrid", 2): (2, 1), ("hybrid", 3): (1, 3), ("hybrid", 4): (2, 2),
    }
    for (name, threads), layout in layouts.items():
        with make(name, threads=threads) as t:
            assert (t.groups, t.blas) == layout, (name, threads)


def test_close_stops_the_workers():
    before = threading.active_count()
    t = make("threads", threads=3)
    t.step(*batch(), 0.1)
    assert threading.active_count() == before + 2  # the caller is worker 0
    t.close()
    t.close()  # idempotent
    assert threading.active_count() == before
    with pytest.raises(RuntimeError, match="closed"):
        t.step(*batch(), 0.1)
