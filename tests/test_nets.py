import numpy as np
import pytest

from parbp import nets


def test_paper_networks():
    assert nets.layer_sizes("1h", 784, 10) == [784, 1024, 10]
    assert nets.layer_sizes("2h", 784, 10) == [784, 1024, 1024, 10]
    assert nets.layer_sizes("2h", 122, 1) == [122, 1024, 1024, 1]


def test_explicit_sizes():
    assert nets.layer_sizes([64, 32], 784, 10) == [784, 64, 32, 10]
    assert nets.layer_sizes([784, 64, 10], 784, 10) == [784, 64, 10]


@pytest.mark.parametrize("bad", ["3h", "", "mlp"])
def test_unknown_net_names_the_choices(bad):
    with pytest.raises(ValueError, match=r"unknown net .*\['1h', '2h'\]"):
        nets.layer_sizes(bad, 784, 10)


def test_non_positive_sizes_rejected():
    with pytest.raises(ValueError, match="positive"):
        nets.layer_sizes([0], 784, 10)


def test_init_is_seeded_and_glorot_scaled():
    a = nets.init_params([784, 1024, 10], seed=7)
    b = nets.init_params([784, 1024, 10], seed=7)
    c = nets.init_params([784, 1024, 10], seed=8)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
    assert not np.array_equal(a[0][0], c[0][0])
    r = np.sqrt(6 / (784 + 1024))
    assert np.abs(a[0][0]).max() <= r and np.abs(a[0][0]).max() > 0.99 * r
    assert all(np.all(bias == 0) for _, bias in a)


def test_param_count_matches_slides():
    # seed 000 quotes ~800,000 and ~1,860,000 parameters for Net-1 and Net-2 on MNIST
    assert nets.n_params([784, 1024, 10]) == 814_090
    assert nets.n_params([784, 1024, 1024, 10]) == 1_863_690


def test_flops_count_by_hand():
    # one layer 3->2, batch 1: forward 2*3*2 + 2*2, gradient 2*3*2 + 2, output delta 3*2, update 2*(6+2)
    assert nets.flops_per_step([3, 2], 1) == (12 + 4) + (12 + 2) + 6 + 16
    # a second layer adds its backward delta 2*2*3... for the layer below: 2*n_out*n_in + 2*n_in
    two = nets.flops_per_step([3, 2, 2], 1)
    assert two == (12 + 4) + (12 + 2) + (8 + 4) + (8 + 2) + (8 + 4) + 6 + 2 * (8 + 6)
    # for the paper's nets the matrix products dominate: 6 flops per weight per example,
    # less the first layer's backward product (no delta is needed for the input)
    weights = 784 * 1024 + 1024 * 1024 + 1024 * 10
    per_ex = nets.flops_per_example([784, 1024, 1024, 10], 1000)
    assert per_ex == pytest.approx(6 * weights - 2 * 784 * 1024, rel=0.01)
    with pytest.raises(ValueError):
        nets.flops_per_step([3, 2], 0)
