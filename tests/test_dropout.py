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


def splitmix_mask(n, key, p):
    """The mask written out in NumPy: element i is dropped when the top 24 bits of
    SplitMix64's output for key + (i + 1) * golden, as a fraction, fall below p."""
    u64 = np.uint64
    z = u64(key) + (np.arange(n, dtype=u64) + u64(1)) * u64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
    z = z ^ (z >> u64(31))
    u = (z >> u64(40)) * (1.0 / 16777216.0)
    return np.where(u < p, 0.0, 1.0 / (1.0 - p))


def test_mask_and_its_product_are_the_reference_on_any_thread_count(rng):
    """1001 elements: thread parts that are no whole number of vectors."""
    from charrnn.kernels.dropout import apply_mask

    expected = splitmix_mask(1001, 12345, 0.3)
    x = rng.standard_normal(1001)
    for nthreads in (1, 2):
        mask, out = np.empty(1001), np.empty(1001)
        dropout_mask(mask, np.uint64(12345), 0.3, nthreads)
        np.testing.assert_array_equal(mask, expected)
        apply_mask(out, x, mask, nthreads)
        np.testing.assert_array_equal(out, x * expected)
