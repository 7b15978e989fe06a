import numpy as np
import pytest
import reference as ref

from charrnn.kernels.loss import softmax_xent, softmax_xent_backward


def test_loss_matches_reference(rng):
    logits = rng.standard_normal((7, 6)) * 3
    targets = rng.integers(0, 6, 7)
    expected = -ref.log_softmax(logits)[np.arange(7), targets].sum()
    assert softmax_xent(logits, targets, 2) == pytest.approx(expected, rel=1e-13)


def test_large_logits_do_not_overflow():
    logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    assert softmax_xent(logits, np.array([1]), 2) == pytest.approx(1000.0, rel=1e-6)


def test_backward_matches_central_differences_in_place(rng):
    logits = rng.standard_normal((5, 6))
    targets = rng.integers(0, 6, 5)
    numeric = ref.numeric_grad(lambda: 0.5 * softmax_xent(logits, targets, 1), logits)
    work = logits.copy()
    total = softmax_xent_backward(work, work, targets, 0.5, 2)
    assert total == pytest.approx(softmax_xent(logits, targets, 2), rel=1e-13)
    np.testing.assert_allclose(work, numeric, rtol=1e-7, atol=1e-9)
