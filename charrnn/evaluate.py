"""Scoring text: mean cross-entropy with the state carried through the whole text."""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from charrnn.data import decode_stream, iter_text, load_ids, load_known_ids
from charrnn.model import RecurrentState
from charrnn.network import Network
from charrnn.novelty import NGRAM_SIZES, fraction, novelty
from charrnn.vocab import UnknownCharactersError, Vocab, code_points, describe_chars


def score_ids(net: Network, ids: np.ndarray, streams: int = 1, chunk: int = 1024) -> tuple[float, int]:
    """Summed cross-entropy (nats) of predicting ids[i] from ids[:i] for every i >= 1.

    The text is cut into `streams` contiguous pieces scored side by side as one batch,
    each from a zero state and with its state carried from chunk to chunk; whatever
    does not divide evenly is scored last, continuing the state of the last piece.
    With streams=1 this is one stream over the whole text. Returns (nats, count).
    """
    total = 0.0
    for total in score_steps(net, ids, streams, chunk):
        pass
    return total, max(0, len(ids) - 1)


def score_steps(net: Network, ids: np.ndarray, streams: int = 1, chunk: int = 1024) -> Iterator[float]:
    """score_ids one chunk at a time: the nats summed so far after each engine call,
    the last one being score_ids's (a server runs other work between them)."""
    n_targets = len(ids) - 1
    if n_targets < 1:
        return
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
        yield total
    if used < n_targets:
        state = state.rows([streams - 1])
        for start in range(used, n_targets, chunk):
            stop = min(n_targets, start + chunk)
            x = ids[start:stop].reshape(-1, 1)
            y = ids[start + 1:stop + 1].reshape(-1, 1)
            loss, state = net.loss_sum(x, y, state)
            total += loss
            yield total


def perplexity_report(nats: float, count: int) -> dict:
    """nats/char, bits/char and perplexity of a summed loss over count characters."""
    mean = nats / count if count else float("nan")
    return {"nats_per_char": mean, "bits_per_char": mean / math.log(2),
            "perplexity": math.exp(mean) if mean < 700 else float("inf"), "chars": count}


STDIN = "-"


def source_name(source) -> str:
    return "standard input" if str(source) == STDIN else str(source)


def read_stdin_text(stream=None) -> str:
    """All of standard input as text, checked as data.iter_text checks a file."""
    return "".join(decode_stream(stream if stream is not None else sys.stdin.buffer, "standard input"))


@dataclass
class Text:
    """One text to score: its ids in the model's vocabulary, the characters that were
    dropped as unknown (with --skip-unknown), and its code points when needed."""

    name: str
    ids: np.ndarray
    unknown: Counter
    code_points: np.ndarray | None = None

    @property
    def skipped(self) -> int:
        return sum(self.unknown.values())


def load_text(source, vocab: Vocab, skip_unknown: bool = False, with_code_points: bool = False) -> Text:
    """A file, or standard input for "-". Characters outside the vocabulary are an
    UnknownCharactersError naming them, or dropped and counted with skip_unknown."""
    name = source_name(source)
    if str(source) != STDIN:
        ids, unknown = load_known_ids(source, vocab) if skip_unknown else (load_ids(source, vocab), Counter())
        cps = None
        if with_code_points:
            pieces = [code_points(t) for t in iter_text(source)]
            cps = np.concatenate(pieces) if pieces else np.zeros(0, np.uint32)
        return Text(name, ids, unknown, cps)
    cps = code_points(read_stdin_text())
    found = vocab.lookup(cps)
    known = found >= 0
    unknown = Counter({chr(int(c)): int(k) for c, k in zip(*np.unique(cps[~known], return_counts=True))})
    if unknown and not skip_unknown:
        raise UnknownCharactersError(f"{name}: characters not in the vocabulary: {describe_chars(unknown)}", unknown)
    return Text(name, found[known].astype(vocab.id_dtype), unknown, cps)


def novelty_report(counts: dict) -> dict:
    """{"20": fraction or None, "40": ...} for novelty.novelty()'s counts of one text."""
    return {str(n): fraction(c) for n, c in counts.items()}


def evaluate_texts(net: Network, texts: list[Text], train_corpus=None) -> dict:
    """Score each text as one stream from a zero state; with train_corpus, also the
    novelty of each text's characters (all of them, also those skipped as unknown)
    against that corpus. Returns {"files": [report per text], "total": report}, the
    total over all predicted characters (and all n-grams)."""
    reports, nats, count = [], 0.0, 0
    for text in texts:
        total, n = score_ids(net, text.ids, streams=1)
        nats, count = nats + total, count + n
        reports.append({"file": text.name, **perplexity_report(total, n)})
    summary = {"files": reports, "total": perplexity_report(nats, count)}
    if train_corpus is not None:
        counts = novelty([t.code_points for t in texts], (code_points(c) for c in iter_text(train_corpus)))
        for report, c in zip(reports, counts):
            report["novelty"] = novelty_report(c)
        summed = {n: [c[n] for c in counts if c[n] is not None] for n in NGRAM_SIZES}
        summary["total"]["novelty"] = novelty_report(
            {n: (sum(a for a, _ in v), sum(b for _, b in v)) if v else None for n, v in summed.items()})
    return summary
