"""Generating text from a trained model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from charrnn.errors import CharrnnError
from charrnn.model import Network, RecurrentState
from charrnn.vocab import Vocab, describe_chars


def encode_prime(vocab: Vocab, prime: str) -> np.ndarray:
    missing = vocab.missing(prime)
    if missing:
        raise CharrnnError(f"the prime text has characters not in the model's vocabulary: "
                           f"{describe_chars(missing)}")
    return vocab.encode(prime).astype(np.int64)


def generate(net: Network, vocab: Vocab, length: int, temperature: float = 1.0, prime: str = "",
             seed: int = 0, argmax: bool = False, on_char: Callable[[str], None] | None = None) -> str:
    """length new characters following prime (which is not part of the result).

    Each character is drawn from softmax(logits / temperature) (or the most likely
    one with argmax) using one uniform number from numpy's default_rng(seed), so
    the same seed gives the same text. Without a prime the model starts after a
    newline when the vocabulary has one (the start of a line), else from a random
    character, which is then the first one generated.
    """
    from charrnn.kernels.sampling import argmax_rows, sample_rows

    rng = np.random.default_rng(seed)
    state = RecurrentState.zeros(net.cfg, 1, net.params.dtype)
    out: list[int] = []
    if prime:
        ids = encode_prime(vocab, prime)
        if ids.size > 1:
            _, state = net.forward(ids[:-1].reshape(-1, 1), state)
        current = int(ids[-1])
    elif "\n" in vocab:
        current = vocab.chars.index("\n")
    elif length > 0:
        current = int(rng.integers(len(vocab)))
        out.append(current)
        if on_char is not None:
            on_char(vocab.chars[current])
    uniforms = rng.random(length)
    choice = np.zeros(1, np.int64)
    while len(out) < length:
        logits, state = net.forward(np.array([[current]]), state)
        if argmax:
            argmax_rows(choice, logits)
        else:
            sample_rows(choice, logits, temperature, uniforms[len(out):len(out) + 1])
        current = int(choice[0])
        out.append(current)
        if on_char is not None:
            on_char(vocab.chars[current])
    return vocab.decode(out)
