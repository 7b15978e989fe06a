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


# ----- top-k and top-p ----------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def allowed(logits, temperature, top_k, top_p, slack=1e-9):
    """The ids that temperature, then top-k, then top-p may keep, computed the slow
    way: most likely first (ties to the lower id), the top k, then the fewest of
    those whose tempered probability reaches p (with slack for rounding)."""
    order = sorted(range(len(logits)), key=lambda j: (-logits[j], j))[:top_k or len(logits)]
    weights = np.exp((np.array([logits[j] for j in order]) - max(logits)) / temperature)
    cum = np.cumsum(weights) / weights.sum()
    n = int(np.searchsorted(cum, min(cum[-1], top_p * (1 + slack)))) + 1
    return set(order[:n])


logit_rows = st.lists(st.integers(-6, 6), min_size=2, max_size=12).map(lambda xs: [x / 2 for x in xs])


@settings(max_examples=300, deadline=None)
@given(logits=logit_rows, temperature=st.sampled_from([0.3, 1.0, 2.5]), top_k=st.integers(0, 13),
       top_p=st.floats(0.01, 1.0), u=st.floats(0.0, 0.999999))
def test_draws_always_lie_in_the_top_k_top_p_set(logits, temperature, top_k, top_p, u):
    out = np.zeros(1, np.int64)
    sample_rows(out, np.array([logits]), temperature, np.array([u]), top_k, top_p)
    assert out[0] in allowed(logits, temperature, top_k, top_p)


@settings(max_examples=100, deadline=None)
@given(logits=logit_rows, temperature=st.sampled_from([0.3, 1.0, 2.5]), u=st.floats(0.0, 0.999999),
       top_p=st.sampled_from([None, 1e-9, 0.5]))
def test_top_k_1_and_a_tiny_top_p_are_argmax(logits, temperature, u, top_p):
    """Ties included: both go to the lower id, as argmax_rows does."""
    row = np.array([logits])
    expected, out = np.zeros(1, np.int64), np.zeros(1, np.int64)
    argmax_rows(expected, row)
    sample_rows(out, row, temperature, np.array([u]), 1, 1.0 if top_p is None else top_p)
    assert out[0] == expected[0]
    sample_rows(out, row, temperature, np.array([u]), 0, 1e-9)
    assert out[0] == expected[0]


def test_a_restriction_that_keeps_everything_is_the_plain_draw(rng):
    logits = rng.normal(size=(50, 7))
    uniforms = rng.random(50)
    plain, restricted = np.zeros(50, np.int64), np.zeros(50, np.int64)
    sample_rows(plain, logits, 0.7, uniforms, 0, 1.0)
    sample_rows(restricted, logits, 0.7, uniforms, 7, 1.0)
    assert (plain == restricted).all()


def test_top_k_renormalises_over_the_kept_characters():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    out = np.zeros(1, np.int64)
    # Top 2 keeps ids 2 and 3 with mass 0.3 : 0.4, drawn in id order.
    for u, expected in [(0.0, 2), (0.42, 2), (0.43, 3), (0.999, 3)]:
        sample_rows(out, logits, 1.0, np.array([u]), 2, 1.0)
        assert out[0] == expected


def test_top_p_keeps_the_fewest_most_likely_reaching_p():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    seen = set()
    out = np.zeros(1, np.int64)
    for u in np.linspace(0, 0.999, 200):
        sample_rows(out, logits, 1.0, np.array([u]), 0, 0.65)  # 0.4 + 0.3 >= 0.65
        seen.add(int(out[0]))
    assert seen == {2, 3}


# ----- min-p, bans and repetition control (DRY) ----------------------------------------

import math  # noqa: E402

from charrnn.kernels.sampling import History, choose_rows, dry_penalize  # noqa: E402
from charrnn.network import make_decoding  # noqa: E402

distinct_rows = st.lists(st.integers(-12, 12), min_size=2, max_size=12, unique=True).map(lambda xs: [x / 3 for x in xs])


@settings(max_examples=200, deadline=None)
@given(logits=distinct_rows, temperature=st.sampled_from([0.3, 1.0, 2.5]), u=st.floats(0.0, 0.999999))
def test_min_p_of_one_is_argmax(logits, temperature, u):
    row, out = np.array([logits]), np.zeros(1, np.int64)
    sample_rows(out, row, temperature, np.array([u]), 0, 1.0, 1.0)
    assert out[0] == int(np.argmax(logits))


@settings(max_examples=300, deadline=None)
@given(logits=logit_rows, temperature=st.sampled_from([0.3, 1.0, 2.5]), min_p=st.floats(0.0, 1.0),
       u=st.floats(0.0, 0.999999))
def test_min_p_never_draws_below_p_times_the_top_probability(logits, temperature, min_p, u):
    out = np.zeros(1, np.int64)
    sample_rows(out, np.array([logits]), temperature, np.array([u]), 0, 1.0, min_p)
    p = np.exp((np.array(logits) - max(logits)) / temperature)
    assert p[out[0]] >= min_p * p.max() * (1 - 1e-12)


def no_history(B):
    return History(np.zeros((B, 0), np.int64), np.zeros(B, np.int64))


@settings(max_examples=200, deadline=None)
@given(logits=logit_rows, data=st.data(), argmax=st.booleans(), u=st.floats(0.0, 0.999999))
def test_a_banned_character_is_never_chosen(logits, data, argmax, u):
    V = len(logits)
    ban = np.array([data.draw(st.lists(st.booleans(), min_size=V, max_size=V).filter(lambda b: not all(b)))])
    out = np.zeros(1, np.int64)
    d = make_decoding(1, 1.0, 0, 1.0, argmax, ban=ban)
    choose_rows(out, np.array([logits], np.float32), np.array([u]), d, no_history(1), 0, 1)
    assert not ban[0, out[0]]


def naive_dry(row, context, multiplier, base, allowed):
    """DRY by its definition, O(L^2): character c extends a repetition of length n when
    context[-n:] + [c] occurs earlier; the longest such n counts."""
    row = row.copy()
    L = len(context)
    longest = {}
    for j in range(1, L):  # c = context[j], following the text that ends at j - 1
        n = 0
        while n < j and context[j - 1 - n] == context[L - 1 - n]:
            n += 1
        longest[context[j]] = max(longest.get(context[j], 0), n)
    for c, n in longest.items():
        if n >= allowed:
            row[c] -= min(multiplier * base ** (n - allowed), 1e30)
    return row


@settings(max_examples=300, deadline=None)
@given(context=st.lists(st.integers(0, 3), max_size=40), allowed=st.integers(1, 4),
       base=st.sampled_from([1.0, 1.75, 3.0]))
def test_dry_penalties_match_the_definition(context, allowed, base):
    row = np.linspace(-1, 1, 4)
    got = row.copy()
    dry_penalize(got, np.array(context, np.int64), 0.8, base, allowed, np.empty(max(1, len(context)), np.int64),
                 np.empty(4, np.int64))
    np.testing.assert_allclose(got, naive_dry(row, context, 0.8, base, allowed), rtol=1e-12)
