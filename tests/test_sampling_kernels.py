import numpy as np

from charrnn.kernels.sampling import argmax_rows, sample_rows


def test_draws_follow_the_tempered_softmax(rng):
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    n = 40000
    counts = np.zeros(4)
    out = np.zeros(1, np.int64)
    for u in rng.random(n):
        sample_rows(out, logits, 1.0, np.array([u]))
        counts[out[0]] += 1
    np.testing.assert_allclose(counts / n, [0.1, 0.2, 0.3, 0.4], atol=0.01)


def test_temperature_sharpens(rng):
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    out = np.zeros(1, np.int64)
    picks = []
    for u in rng.random(2000):
        sample_rows(out, logits, 0.1, np.array([u]))
        picks.append(out[0])
    assert np.mean(np.array(picks) == 3) > 0.9


def test_inverse_cdf_boundaries():
    logits = np.zeros((1, 4))
    out = np.zeros(1, np.int64)
    for u, expected in [(0.0, 0), (0.2499, 0), (0.2501, 1), (0.999999, 3)]:
        sample_rows(out, logits, 1.0, np.array([u]))
        assert out[0] == expected


def test_never_picks_an_impossible_character():
    logits = np.array([[0.0, -np.inf, 0.0, -np.inf]])
    out = np.zeros(1, np.int64)
    for u in np.linspace(0, 0.999999, 101):
        sample_rows(out, logits, 1.0, np.array([u]))
        assert out[0] in (0, 2)


def test_argmax_rows():
    out = np.zeros(2, np.int64)
    argmax_rows(out, np.array([[0.1, 0.9, 0.3], [5.0, 5.0, 1.0]]))
    assert out.tolist() == [1, 0]
