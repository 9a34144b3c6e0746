"""The roofline model of parbp.roofline: bytes counted by hand, the two forms' intensities, the roof, the figure."""
import numpy as np
import pandas as pd
import pytest

from parbp import bench, roofline
from parbp.nets import layer_sizes

SIZES_2H = layer_sizes("2h", 784, 10)


def test_bytes_moved_by_hand():
    # one layer 3 -> 2: W has 6 values; no delta below the first layer, so 3 weight-sized passes
    per_step = 3 * 6 + 5 * (3 * 3 + 4 * 2)
    per_example = 5 * (3 * 6 + 2 * (3 + 2))
    assert roofline.bytes_moved([3, 2], 5, per_example=False) == 4 * per_step
    assert roofline.bytes_moved([3, 2], 5, per_example=True) == 4 * per_example
    # a second layer 2 -> 4 adds the delta product's read of its weights: 4 passes
    assert roofline.bytes_moved([3, 2, 4], 1, False) - roofline.bytes_moved([3, 2], 1, False) == 4 * (4 * 8 + 3 * 2 + 4 * 4)


def test_per_example_stays_memory_bound_and_batching_raises_the_intensity():
    per_example = [roofline.intensity(SIZES_2H, b, per_example=True) for b in (1, 10, 100, 1000)]
    minibatch = [roofline.intensity(SIZES_2H, b, per_example=False) for b in (1, 10, 100, 1000)]
    assert max(per_example) <= 0.5 + 1e-3  # two flops per four-byte weight read, at best
    assert minibatch[0] == pytest.approx(per_example[0], rel=1e-2)  # one example: the same matrix-vector work
    assert all(a < b for a, b in zip(minibatch, minibatch[1:]))
    assert minibatch[-1] > 50 * minibatch[0]


@pytest.mark.parametrize("batch", [0, -3])
def test_bad_batch_is_named(batch):
    with pytest.raises(ValueError, match="batch must be a positive"):
        roofline.bytes_moved(SIZES_2H, batch, per_example=False)


def test_roof_is_the_lower_of_compute_and_memory():
    assert roofline.roof(100.0, 10.0, [1.0, 10.0, 100.0]).tolist() == [10.0, 100.0, 100.0]
    table = roofline.roof_table(100.0, 10.0)
    assert table.gflops_roof.max() == 100.0 and table.flop_per_byte.is_monotonic_increasing


def test_stream_bandwidth_is_a_positive_rate():
    assert roofline.stream_bandwidth(n_bytes=2**20, repeats=2) > 0
    with pytest.raises(ValueError, match="repeats"):
        roofline.stream_bandwidth(repeats=0)


def test_the_figures_draw_from_their_tables():
    import matplotlib.pyplot as plt

    speed = pd.DataFrame({"impl": ["serial-example"] * 2 + ["serial-blas"] * 2, "batch": [1, 100] * 2,
                          "gflops": [10.0, 12.0, 8.0, 60.0],
                          "flop_per_byte": [0.5, 0.36, 0.5, 28.9]})
    fig = roofline.plot(speed, 80.0, 30.0, "2h")
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {"B=1", "B=100"} <= labels
    plt.close(fig)
    rows = np.array([10, 100, 1000])
    fig = bench.plot_gemm_fixed_cost(pd.DataFrame({"rows": rows, "ms": 0.3 + 0.01 * rows, "backend": "openblas"}))
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    plt.close(fig)


def test_fit_fixed_cost_recovers_a_line():
    fixed, per_row = bench.fit_fixed_cost([10, 20, 40], [1.2, 1.4, 1.8])
    assert fixed == pytest.approx(1.0) and per_row == pytest.approx(0.02)
