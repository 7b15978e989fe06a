import math

import numpy as np
import pytest
import reference as ref

from charrnn.evaluate import perplexity_report, score_ids
from charrnn.config import ModelConfig
from charrnn.model import Parameters, RecurrentState, init_params
from charrnn.network import Network


@pytest.fixture(params=["lstm", "gru"])
def net(request):
    cfg = ModelConfig(vocab_size=6, cell=request.param, layers=2, hidden=5, embed=4)
    params = Parameters(cfg, np.float64)
    init_params(params, np.random.default_rng(0))
    return Network(cfg, params)


def reference_single_stream(net, ids):
    zero = RecurrentState.zeros(net.cfg, 1, np.float64)
    return ref.network_loss(net.params.views, net.cfg, ids[:-1].reshape(-1, 1), ids[1:].reshape(-1, 1),
                            zero.h, zero.c)


def test_one_stream_scores_every_character_from_all_before_it(net, rng):
    ids = rng.integers(0, 6, 23)
    total, count = score_ids(net, ids, streams=1, chunk=5)
    assert count == 22
    assert total == pytest.approx(reference_single_stream(net, ids), rel=1e-12)


def test_chunk_length_does_not_matter(net, rng):
    ids = rng.integers(0, 6, 40)
    a, _ = score_ids(net, ids, streams=1, chunk=3)
    b, _ = score_ids(net, ids, streams=1, chunk=1000)
    assert a == pytest.approx(b, rel=1e-12)


def test_several_streams_cover_every_character_and_the_remainder_continues_the_last(net, rng):
    ids = rng.integers(0, 6, 24)  # 23 targets: 3 streams of 7, 2 left over
    total, count = score_ids(net, ids, streams=3, chunk=4)
    assert count == 23
    pieces = [ids[0:8], ids[7:15], ids[14:24]]  # the last stream runs on to the end
    assert total == pytest.approx(sum(reference_single_stream(net, p) for p in pieces), rel=1e-12)


def test_report_units():
    r = perplexity_report(2 * math.log(2) * 10, 10)
    assert r["bits_per_char"] == pytest.approx(2.0) and r["perplexity"] == pytest.approx(4.0) and r["chars"] == 10


def test_standard_input_drops_a_byte_order_mark():
    import io

    from charrnn.evaluate import read_stdin_text

    assert read_stdin_text(io.BytesIO("\ufeffab\n".encode())) == "ab\n"


def test_line_mode_scores_a_windows_line_end_as_the_end_it_trained_on(net):
    """Line mode's training reads "ab\\r\\n" as the line "ab" (read_lines): scoring
    leaves the \\r out of the line too, with the same nats; a line of only \\r is no line."""
    from charrnn.evaluate import score_text

    cr, end = 5, 0  # ids: 0 the newline, 5 \r
    unix = np.array([1, 2, 0, 3, 4, 2, 0, 0], np.int64)
    windows = np.array([1, 2, 5, 0, 3, 4, 2, 5, 0, 5, 5, 0], np.int64)
    a, b = score_text(net, unix, end, True, cr), score_text(net, windows, end, True, cr)
    np.testing.assert_array_equal(a.nats, b.nats)
    assert a.counts.tolist() == b.counts.tolist() == [3, 4]
    assert [(x, y) for x, y, _, _ in b.lines] == [(0, 2), (4, 7), (9, 9)]
    assert score_text(net, windows, end, True).counts.tolist() == [4, 5, 3]  # without cr: \r is a character
