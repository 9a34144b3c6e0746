"""The footprint formulas of parbp.memory against tracemalloc's measured peak, and their edges."""
import pytest

from parbp import memory
from parbp.nets import layer_sizes, n_params

SIZES_1H = layer_sizes("1h", 784, 10)


@pytest.mark.parametrize("trainer, options", [
    ("numpy", {}), ("reference", {}), ("serial-example", {}), ("serial-blas", {}),
    ("threads", {"threads": 2}), ("threads", {"threads": 2, "update": "partials"}), ("hogwild", {"threads": 2}),
])
@pytest.mark.parametrize("batch", [10, 300, 1000])
def test_formula_matches_measured_peak(trainer, options, batch):
    df = memory.compare(trainer, "1h", [batch], **options)
    assert abs(df.ratio.iloc[0] - 1) < 0.10, df.to_string()


def test_terms_of_the_matrix_trainers():
    B, s = 100, 4
    terms = {t.what: t.nbytes for t in memory.footprint("serial-blas", SIZES_1H, B)}
    assert terms["weights and biases"] == n_params(SIZES_1H) * s
    assert terms["activations A_1..A_L"] == terms["deltas Δ_1..Δ_L"] == B * (1024 + 10) * s
    partials = memory.footprint("threads", SIZES_1H, B, threads=3, update="partials")
    assert partials[-1].nbytes == 3 * n_params(SIZES_1H) * s  # one weight-sized copy per worker
    # a batch of 1 cannot be split: no partial copies
    assert "partial" not in memory.footprint("threads", SIZES_1H, 1, threads=3, update="partials")[-1].what


def test_serial_example_does_not_grow_with_the_batch_beyond_its_input():
    grow = [t for t in memory.footprint("serial-example", SIZES_1H, 1000) if t.scales_with_batch]
    assert [t.what for t in grow] == ["minibatch X, Y"]


def test_gpu_formulas_count_device_copies():
    cupy = memory.footprint_bytes("cupy", SIZES_1H, 100)
    host = memory.footprint_bytes("serial-blas", SIZES_1H, 100)
    assert cupy == host + (1024 + 10) * 4  # the same buffers + the bias-gradient vectors


def test_max_batch_is_the_largest_that_fits():
    for trainer in ("numpy", "threads", "reference"):
        budget = 64 * 2**20
        B = memory.max_batch(trainer, SIZES_1H, budget)
        assert memory.footprint_bytes(trainer, SIZES_1H, B) <= budget < memory.footprint_bytes(trainer, SIZES_1H, B + 1)
    assert memory.max_batch("serial-blas", SIZES_1H, 1000) == 0  # not even the weights fit


def test_layer_table_totals():
    df = memory.layer_table(SIZES_1H, 10)
    assert df.iloc[-1].weights_bytes == n_params(SIZES_1H) * 4
    assert df.iloc[-1].outputs_bytes_at_batch == 10 * (784 + 1024 + 10) * 4


@pytest.mark.parametrize("call, match", [
    (lambda: memory.footprint("torch", SIZES_1H, 10), "no footprint formula.*formulas exist for"),
    (lambda: memory.footprint("numpy", SIZES_1H, 0), "batch must be a positive integer"),
    (lambda: memory.footprint("numpy", [784], 10), "at least two positive layer widths"),
    (lambda: memory.max_batch("numpy", SIZES_1H, 0), "memory_bytes must be positive"),
    (lambda: memory.trainer_and_options("threads:rows"), "the only variant is ':partials'"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_footprint_figure_draws_one_line_per_formula():
    import pandas as pd

    specs = ["numpy", "serial-blas", "threads", "hogwild", "threads:partials"]
    measured = pd.DataFrame([{"trainer": s, "net": net, "batch": 10, "measured_bytes": 2**22}
                             for s in specs for net in ("1h", "2h")])
    fig = memory.plot_footprint(measured, specs)
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
        # serial-blas, threads and hogwild keep the same buffers: one line, named after all three
        assert labels == ["numpy", "serial-blas, threads, hogwild (one formula)", "threads:partials"]
        assert sum(1 for line in ax.get_lines() if line.get_marker() not in ("None", None, "")) == len(specs)
