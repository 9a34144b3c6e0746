import numpy as np
import pandas as pd
import pytest

from parbp import costmodel as cm


def test_fit_recovers_alpha_and_beta():
    true = cm.AlphaBeta(alpha=5e-6, beta=2e-10)
    n = np.array(cm.SIZES, dtype=float)
    noise = np.random.default_rng(0).normal(1.0, 0.01, len(n))
    got = cm.fit(pd.DataFrame({"bytes": n, "seconds": true.time(n) * noise}))
    assert got.alpha == pytest.approx(5e-6, rel=0.05)
    assert got.beta == pytest.approx(2e-10, rel=0.05)
    assert got.bandwidth_gbs == pytest.approx(5.0, rel=0.05)


def test_fit_rejects_nonsense():
    with pytest.raises(ValueError, match="bandwidth is not positive"):
        cm.fit(pd.DataFrame({"bytes": [8, 1e6, 1e7], "seconds": [1e-3, 1e-4, 1e-5]}))


def test_communication_formulas():
    m = cm.AlphaBeta(alpha=1e-5, beta=1e-9)
    nbytes = 4e6
    # p = 4: ring sends 2(p-1) = 6 messages of n/p bytes; the server handles 2p = 8 full messages
    assert cm.ring_allreduce(m, nbytes, 4) == pytest.approx(6 * 1e-5 + 6 / 4 * 4e6 * 1e-9)
    assert cm.parameter_server(m, nbytes, 4) == pytest.approx(8 * (1e-5 + 4e6 * 1e-9))
    assert cm.ring_allreduce(m, nbytes, 1) == 0 and cm.parameter_server(m, nbytes, 1) == 0
    # the ring's bandwidth term saturates at 2n·β; the server's grows without bound
    assert cm.ring_allreduce(m, nbytes, 1024) < 2 * nbytes * 1e-9 + 2 * 1023 * 1e-5 + 1e-12
    assert cm.parameter_server(m, nbytes, 1024) > 10 * cm.ring_allreduce(m, nbytes, 1024)


def test_projection():
    m, c = cm.AlphaBeta(1e-5, 1e-9), cm.Compute(t_example=1e-4, t_update=1e-3)
    df = cm.project(m, c, n_params=800_000, workers=[1, 2, 4, 2048], batch_size=1000)
    assert set(df.workers) == {1, 2, 4}  # strong scaling: no more workers than examples
    one = df[df.workers == 1]
    assert np.allclose(one.efficiency, 1.0)
    ring = df[df.scheme == "ring all-reduce"].set_index("workers")
    step = 500 * 1e-4 + 1e-3 + cm.ring_allreduce(m, 3.2e6, 2)
    assert ring.step_s[2] == pytest.approx(step)
    assert ring.efficiency[2] == pytest.approx((1000 * 1e-4 + 1e-3) / (2 * step))
    weak = cm.project(m, c, 800_000, [2, 1024], batch_size=100, scaling="weak")
    assert set(weak.workers) == {2, 1024} and (weak.efficiency < 1).all()
    with pytest.raises(ValueError, match="scaling must be"):
        cm.project(m, c, 10, [2], scaling="diagonal")


def test_measure_messages_with_mpiexec():
    df = cm.measure_messages(processes=2, sizes=(8, 65536), budget=0.005, timeout=60)
    assert set(df.op) == {"pingpong", "allreduce"} and set(df.bytes) == {8, 65536}
    assert (df.seconds > 0).all() and (df.seconds < 1).all()
    with pytest.raises(ValueError, match="unknown transport"):
        cm.measure_messages(transport="carrier-pigeon")


def test_measure_compute():
    c = cm.measure_compute([8], batch_size=50, impl="numpy", repeat=2)
    assert c.t_example > 0 and c.t_update >= 0


def test_pipeline_step_formula():
    m, c = cm.AlphaBeta(1e-5, 1e-9), cm.Compute(t_example=1e-4, t_update=2e-3)
    # one stage: the serial step, whatever m
    assert cm.pipeline_step(m, c, 1, 4, 1000, 1024) == pytest.approx(c.time(1000))
    # free messages, equal stages: the work spread over p, stretched by the bubble (m + p - 1)/m
    free = cm.AlphaBeta(0.0, 0.0)
    assert cm.pipeline_step(free, c, 4, 8, 1000, 1024) == pytest.approx(11 / 8 * 0.1 / 4 + 2e-3 / 4)
    # each micro-batch slot pays one activation forward and one delta back: 2(α + 4·width·B/m·β)
    slot = 2 * (1e-5 + 4 * 1024 * 125 * 1e-9)
    assert cm.pipeline_step(m, c, 2, 8, 1000, 1024) == pytest.approx(9 * (0.1 / 16 + slot) + 1e-3)
    # an unequal split slows the whole pipeline by the slowest stage
    assert cm.pipeline_step(free, c, 2, 8, 1000, 1024, imbalance=1.5) > cm.pipeline_step(free, c, 2, 8, 1000, 1024)


def test_projection_data_against_model_parallel():
    c = cm.Compute(t_example=1e-4, t_update=2e-3)
    df = cm.project_parallelism(cm.INFINIBAND_HDR, c, n_params=1_000_000, width=1024, workers=[1, 2, 8, 4096])
    assert set(df.workers) == {1, 2, 8} and set(df.scheme) == {"data parallel (ring all-reduce)", "model parallel (pipeline)"}
    assert np.allclose(df[df.workers == 1].efficiency, 1.0)
    pp = df[df.scheme.str.startswith("model")].set_index("workers")
    assert pp.micro_batches[8] == 32 and (pp.comm_s[1] == 0) and (pp.comm_s[8] > 0)
    assert (df.efficiency <= 1 + 1e-9).all()
    assert cm.INFINIBAND_HDR.bandwidth_gbs == pytest.approx(25.0)
