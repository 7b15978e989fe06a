import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import charrnn.novelty as nov
from charrnn.novelty import novelty, window_hashes
from charrnn.vocab import code_points


def brute_force(text: str, corpus: str, n: int):
    if len(text) < n:
        return None
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    have = {corpus[i:i + n] for i in range(len(corpus) - n + 1)}
    return sum(g not in have for g in grams), len(grams)


def pieces(text: str, cuts: list[int]):
    """The code points of text cut into pieces at the given places."""
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [code_points(text[a:b]) for a, b in zip(bounds, bounds[1:])]


texts = st.lists(st.text("abc", max_size=30), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(texts=texts, corpus=st.text("abcd", max_size=80), cuts=st.lists(st.integers(0, 80), max_size=4),
       segment=st.integers(1, 9), weak_hash=st.booleans())
def test_counts_match_a_brute_force_count(texts, corpus, cuts, segment, weak_hash):
    """Also with a hash that collides all the time (base 1: the sum of the code
    points), and with the corpus cut into segments of a few characters."""
    sizes = (2, 3, 5)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(nov, "SEGMENT", segment)
        if weak_hash:
            m.setattr(nov, "_BASE", 1)
        got = novelty([code_points(t) for t in texts], pieces(corpus, cuts), sizes)
    assert got == [{n: brute_force(t, corpus, n) for n in sizes} for t in texts]


def test_window_hashes_are_the_polynomial_of_each_window(rng):
    cps = rng.integers(1, 0x10FFFF, 50).astype(np.uint32)
    hashes = window_hashes(cps, (1, 7, 20, 40))
    for n, h in hashes.items():
        expected = [sum(int(c) * pow(nov._BASE, n - 1 - j, 1 << 64) for j, c in enumerate(cps[i:i + n])) % (1 << 64)
                    for i in range(len(cps) - n + 1)]
        assert h.tolist() == expected


def test_verbatim_slice_is_not_novel_and_shuffled_text_is(rng):
    corpus = "".join(rng.choice(list("abcdefghij klmnop\n"), 20000))
    chars = list(corpus[5000:6000])
    rng.shuffle(chars)
    result = novelty([code_points(corpus[5000:6000]), code_points("".join(chars)), code_points("short")],
                     [code_points(corpus)])
    assert result[0] == {20: (0, 981), 40: (0, 961)}
    assert result[1][20][0] / 981 > 0.99 and result[1][40] == (961, 961)
    assert result[2] == {20: None, 40: None}


def test_reading_stops_once_everything_is_found():
    corpus = "abcdefghijklmnopqrstuvwxyz" * 10
    read = []

    def chunks():
        for i in range(0, 10_000):
            read.append(i)
            yield code_points(corpus)

    assert novelty([code_points(corpus[3:60])], chunks()) == [{20: (0, 38), 40: (0, 18)}]
    assert len(read) == 1
