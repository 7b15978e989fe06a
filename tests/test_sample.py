import numpy as np
import pytest

from charrnn.errors import CharrnnError
from charrnn.model import ModelConfig, Network, ParamBuffer, init_params
from charrnn.sample import generate
from charrnn.vocab import Vocab


@pytest.fixture
def model():
    vocab = Vocab.from_chars("abcdefgh \n")
    cfg = ModelConfig(vocab_size=len(vocab), layers=2, hidden=8, embed=4)
    params = ParamBuffer(cfg)
    init_params(params, np.random.default_rng(0))
    return Network(cfg, params), vocab


def test_same_seed_same_text_other_seed_other_text(model):
    net, vocab = model
    a = generate(net, vocab, 200, 1.0, "abc", seed=5)
    assert a == generate(net, vocab, 200, 1.0, "abc", seed=5)
    assert a != generate(net, vocab, 200, 1.0, "abc", seed=6)
    assert len(a) == 200 and set(a) <= set(vocab.chars)


def test_exact_length_with_and_without_prime(model):
    net, vocab = model
    for prime in ("", "a", "abc def"):
        for n in (0, 1, 17):
            assert len(generate(net, vocab, n, 0.8, prime, seed=1)) == n


def test_argmax_is_deterministic_without_a_seed(model):
    net, vocab = model
    assert generate(net, vocab, 50, argmax=True, seed=1) == generate(net, vocab, 50, argmax=True, seed=2)


def test_streaming_callback_sees_every_character(model):
    net, vocab = model
    seen = []
    text = generate(net, vocab, 30, prime="ab", seed=3, on_char=seen.append)
    assert "".join(seen) == text


def test_unknown_prime_characters_are_named(model):
    net, vocab = model
    with pytest.raises(CharrnnError, match="'z'"):
        generate(net, vocab, 10, prime="az")


def test_vocabulary_without_newline(model):
    net, _ = model
    vocab = Vocab.from_chars("abcdefghij")
    text = generate(net, vocab, 12, seed=4)
    assert len(text) == 12
