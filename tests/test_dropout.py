import numpy as np

from charrnn.kernels.dropout import dropout_mask


def test_mask_values_rate_and_expectation():
    mask = np.empty((50, 40, 30), np.float32)
    dropout_mask(mask, np.uint64(42), 0.25, 2)
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert abs((mask == 0).mean() - 0.25) < 0.01
    assert abs(mask.mean() - 1.0) < 0.02


def test_same_key_same_mask_other_key_other_mask():
    a, b, c = (np.empty(1000) for _ in range(3))
    dropout_mask(a, np.uint64(7), 0.5, 2)
    dropout_mask(b, np.uint64(7), 0.5, 2)
    dropout_mask(c, np.uint64(8), 0.5, 2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.3


def test_zero_rate_keeps_everything():
    mask = np.empty(100)
    dropout_mask(mask, np.uint64(3), 0.0, 2)
    np.testing.assert_array_equal(mask, 1.0)
