"""The drawing of how CUDA blocks tile a matrix, and the share of launched work past the matrix's edges."""
import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

from matplotlib.patches import Rectangle  # noqa: E402

from parbp import cuda_tiling as tiling  # noqa: E402
from parbp.cuda import launch_geometry  # noqa: E402


def test_blocks_cover_the_matrix():
    assert tiling.blocks_along(64, 64) == 1
    assert tiling.blocks_along(65, 64) == 2
    assert tiling.blocks_along(10, 64) == 1


def test_the_grid_panel_draws_one_square_per_block():
    fig = tiling.draw_tiling(tile=4, reg_block=2, rows=13, cols=21)
    assert len(fig.axes) == 3
    squares = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and p.get_width() == p.get_height() == 8]
    assert len(squares) == 2 * 3  # 13 rows need 2 blocks of 8, 21 columns 3
    owned = [t.get_text() for t in fig.axes[1].texts]  # thread (1, 2) owns 2 × 2 outputs
    assert sorted(owned) == ["0,0", "0,1", "1,0", "1,1"]


@pytest.mark.parametrize("bad", [dict(tile=0), dict(rows=-1), dict(cols=2.5), dict(reg_block=True)])
def test_bad_sizes_are_named(bad):
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive integer"):
        tiling.draw_tiling(**bad)


def test_idle_share_weighs_each_launch_by_its_launched_work():
    # one launch fully used, one with half its slots idle: 100 + 100 useful, 100 + 200 launched
    rows = pd.DataFrame(dict(net="x", batch=1, flops=[100.0, 100.0], idle=[0.0, 0.5]))
    assert tiling.launched_work(rows).launched.tolist() == [100.0, 200.0]
    assert tiling.idle_share(rows).loc[("x", 1)] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"missing \['idle'\]"):
        tiling.idle_share(rows.drop(columns="idle"))


def test_an_output_layer_narrower_than_a_block_idles_most_of_it():
    # Net-1h on MNIST: the 10-unit output layer in 64-wide blocks (tile 16, reg_block 4)
    geometry = pd.DataFrame(launch_geometry([784, 1024, 10], 128, 16, 4)).assign(net="1h", batch=128)
    out = geometry[(geometry.kernel == "forward_layer") & (geometry.layer == 2)].iloc[0]
    assert out.idle == pytest.approx(1 - 10 / 64)  # 128 examples fill two 64-row blocks exactly
    assert 0 < tiling.idle_share(geometry).iloc[0] < out.idle
