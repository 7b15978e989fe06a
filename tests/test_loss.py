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


def test_padded_rows_add_no_loss_and_no_gradient(rng):
    """A negative target marks padding (line mode): the loss is that of the other rows,
    their gradients are unchanged, and the padded rows' gradients are zero."""
    from charrnn.kernels.loss import softmax_xent_rows

    logits = rng.standard_normal((6, 5))
    targets = np.array([1, -1, 4, 0, -1, 2])
    real = targets >= 0
    assert softmax_xent(logits, targets, 2) == pytest.approx(softmax_xent(logits[real], targets[real], 2), rel=1e-13)
    work = logits.copy()
    softmax_xent_backward(work, work, targets, 0.5, 2)
    alone = logits[real].copy()
    softmax_xent_backward(alone, alone, targets[real], 0.5, 2)
    np.testing.assert_array_equal(work[real], alone)
    assert not work[~real].any()
    rows = np.empty(6)
    softmax_xent_rows(rows, logits, targets, 2)
    np.testing.assert_allclose(rows[real], -ref.log_softmax(logits[real])[np.arange(4), targets[real]], rtol=1e-13)
    assert not rows[~real].any()
