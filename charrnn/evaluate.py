"""Scoring text: mean cross-entropy with the state carried through the whole text."""

from __future__ import annotations

import math

import numpy as np

from charrnn.model import Network, RecurrentState


def score_ids(net: Network, ids: np.ndarray, streams: int = 1, chunk: int = 1024) -> tuple[float, int]:
    """Summed cross-entropy (nats) of predicting ids[i] from ids[:i] for every i >= 1.

    The text is cut into `streams` contiguous pieces scored side by side as one batch,
    each from a zero state and with its state carried from chunk to chunk; whatever
    does not divide evenly is scored last, continuing the state of the last piece.
    With streams=1 this is one stream over the whole text. Returns (nats, count).
    """
    n_targets = len(ids) - 1
    if n_targets < 1:
        return 0.0, 0
    streams = max(1, min(streams, n_targets))
    per_stream = n_targets // streams
    used = streams * per_stream
    x_all = ids[:used].reshape(streams, per_stream)
    y_all = ids[1:used + 1].reshape(streams, per_stream)
    state = RecurrentState.zeros(net.cfg, streams, net.params.dtype)
    total = 0.0
    for start in range(0, per_stream, chunk):
        cols = slice(start, min(per_stream, start + chunk))
        loss, state = net.loss_sum(x_all[:, cols].T, y_all[:, cols].T, state)
        total += loss
    if used < n_targets:
        state = state.rows([streams - 1])
        for start in range(used, n_targets, chunk):
            stop = min(n_targets, start + chunk)
            x = ids[start:stop].reshape(-1, 1)
            y = ids[start + 1:stop + 1].reshape(-1, 1)
            loss, state = net.loss_sum(x, y, state)
            total += loss
    return total, n_targets


def perplexity_report(nats: float, count: int) -> dict:
    """nats/char, bits/char and perplexity of a summed loss over count characters."""
    mean = nats / count if count else float("nan")
    return {"nats_per_char": mean, "bits_per_char": mean / math.log(2),
            "perplexity": math.exp(mean) if mean < 700 else float("inf"), "chars": count}
