"""Scoring text: mean cross-entropy with the state carried through the whole text."""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from charrnn.data import decode_stream, iter_text, load_ids, load_known_ids
from charrnn.lines import pad
from charrnn.model import RecurrentState
from charrnn.network import Network, run_to_end
from charrnn.novelty import NGRAM_SIZES, fraction, novelty
from charrnn.vocab import UnknownCharactersError, Vocab, code_points, describe_chars


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


def char_losses(net: Network, ids: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """The cross-entropy (nats) of predicting each ids[i] from ids[:i], i >= 1: one
    stream from a zero state, as score_ids(streams=1) sums them. (len(ids) - 1,)."""
    out = np.zeros(max(0, len(ids) - 1))
    for _ in _char_loss_chunks(net, ids, out, chunk):
        pass
    return out


def _char_loss_chunks(net: Network, ids: np.ndarray, out: np.ndarray, chunk: int):
    """char_losses into out, one chunk per step of the iteration."""
    state = RecurrentState.zeros(net.cfg, 1, net.params.dtype)
    for start in range(0, out.size, chunk):
        stop = min(out.size, start + chunk)
        rows, state = net.loss_rows(ids[start:stop].reshape(-1, 1), ids[start + 1:stop + 1].reshape(-1, 1), state)
        out[start:stop] = rows[:, 0]
        yield


def line_losses(net: Network, lines: list[np.ndarray], end: int, batch: int = 64) -> np.ndarray:
    """Line mode: each line's nats, read from a zero state after the start marker and
    predicting its characters and then its end (len(line) + 1 predictions). Lines of
    like length are scored together, padded."""
    out = np.zeros(len(lines))
    for _ in _line_loss_batches(net, lines, end, batch, out):
        pass
    return out


def _line_loss_batches(net: Network, lines: list[np.ndarray], end: int, batch: int, out: np.ndarray):
    """line_losses into out, one batch of lines per step of the iteration."""
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
    for i in range(0, len(order), batch):
        chosen = order[i:i + batch]
        x, y = pad([lines[j] for j in chosen], len(chosen), end)
        rows, _ = net.loss_rows(x, y, RecurrentState.zeros(net.cfg, len(chosen), net.params.dtype))
        out[chosen] = rows.sum(axis=0)
        yield


def mean_and_stderr(nats: np.ndarray, counts: np.ndarray) -> tuple[float, float | None]:
    """The mean nats/char over units (lines, or blocks of text) of nats[i] over
    counts[i] characters, sum(nats) / sum(counts), and its standard error, treating
    the units as independent draws (the ratio estimator's; None for one unit)."""
    total, n = float(nats.sum()), int(counts.sum())
    mean = total / n if n else float("nan")
    k = nats.size
    if k < 2 or not n:
        return mean, None
    residual = nats - mean * counts
    return mean, math.sqrt((residual ** 2).sum() / (k * (k - 1))) / (n / k)


# Blocks of this many characters are the units of a stream's standard error: long
# enough that a block's loss depends little on the one before (a character model's
# context fades within a few hundred characters), short enough to have many.
STDERR_BLOCK = 1000


def block_units(losses: np.ndarray, block: int = STDERR_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(nats, characters) of each block of a stream's per-character losses."""
    starts = np.arange(0, losses.size, block)
    return np.add.reduceat(losses, starts) if losses.size else np.zeros(0), np.diff(np.append(starts, losses.size))


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


@dataclass
class Scored:
    """A text's losses: nats[i] over counts[i] predicted characters for each unit (a
    line in line mode, else a block of STDERR_BLOCK characters of the stream), the
    units of its standard error; and, per input line, (start, stop) of its characters
    in the text's ids, its nats and its predictions."""

    nats: np.ndarray
    counts: np.ndarray
    lines: list[tuple[int, int, float, int]]

    def report(self) -> dict:
        mean, stderr = mean_and_stderr(self.nats, self.counts)
        return {**perplexity_report(float(self.nats.sum()), int(self.counts.sum())), "nats_per_char_stderr": stderr}


def _line_bounds(ids: np.ndarray, end: int, cr: int = -1) -> list[tuple[int, int]]:
    """(start, stop) of every line of a text's ids, its end excluded, as str.splitlines
    cuts text (a final end starts no new line); with cr (an id, -1 for none), as line
    mode's training reads lines (read_lines): a cr at a line's end is part of the end,
    and a line of nothing but cr is empty."""
    ends = np.flatnonzero(ids == end).tolist()
    starts = [0] + [e + 1 for e in ends]
    stops = ends + [ids.size]
    bounds = list(zip(starts, stops))
    bounds = bounds[:-1] if bounds and bounds[-1][0] == ids.size else bounds
    if cr < 0:
        return bounds

    def without_cr(a: int, b: int) -> tuple[int, int]:
        if (ids[a:b] == cr).all():  # nothing but cr (or nothing): an empty line
            return a, a
        return (a, b - 1) if ids[b - 1] == cr else (a, b)

    return [without_cr(a, b) for a, b in bounds]


def score_text(net: Network, ids: np.ndarray, end: int, lines: bool, cr: int = -1) -> Scored:
    """Score a text as `charrnn evaluate` does. Streams: one stream from a zero state,
    every character predicted from all before it. Line mode: every non-empty line on
    its own (see line_losses), its end predicted too (a \\r before it, id cr, is part
    of the end, as in training); per input line, empty ones too."""
    return run_to_end(score_text_steps(net, ids, end, lines, cr))


def score_text_steps(net: Network, ids: np.ndarray, end: int, lines: bool,
                     cr: int = -1) -> Generator[None, None, Scored]:
    """score_text one engine call (a chunk of text, or a batch of lines) per step of the
    iteration, the Scored being the generator's return value: for a server, which runs
    other work between the steps."""
    bounds = _line_bounds(ids, end, cr if lines else -1) if end >= 0 else [(0, ids.size)]
    if lines:
        nats = np.zeros(len(bounds))
        yield from _line_loss_batches(net, [ids[a:b].astype(np.int64) for a, b in bounds], end, 64, nats)
        counts = np.array([b - a + 1 for a, b in bounds])
        per_line = [(a, b, float(n), int(c)) for (a, b), n, c in zip(bounds, nats, counts)]
        used = counts > 1  # empty lines are no samples (training passes them over too)
        return Scored(nats[used], counts[used], per_line)
    losses = np.zeros(max(0, ids.size - 1))
    yield from _char_loss_chunks(net, ids.astype(np.int64), losses, 1024)
    per_line = []
    for a, b in bounds:  # line i's predictions: its characters and its end, the text's first one excepted
        lo, hi = max(a, 1), min(b + 1, ids.size)
        per_line.append((a, b, float(losses[lo - 1:hi - 1].sum()), hi - lo))
    block_nats, block_counts = block_units(losses)
    return Scored(block_nats, block_counts, per_line)


def evaluate_texts(net: Network, texts: list[Text], train_corpus=None, end: int = -1, lines: bool = False,
                   cr: int = -1) -> dict:
    """Score each text (see score_text); with train_corpus, also the novelty of each
    text's characters (all of them, also those skipped as unknown) against that corpus.
    Returns {"files": [report per text], "total": report, "scored": [Scored per text]},
    the total over all predicted characters (and all n-grams) with the standard error
    over the units of every text."""
    scored = [score_text(net, text.ids, end, lines, cr) for text in texts]
    reports = [{"file": text.name, **s.report()} for text, s in zip(texts, scored)]
    pooled = Scored(np.concatenate([s.nats for s in scored]), np.concatenate([s.counts for s in scored]), [])
    summary = {"files": reports, "total": pooled.report(), "scored": scored}
    if train_corpus is not None:
        counts = novelty([t.code_points for t in texts], (code_points(c) for c in iter_text(train_corpus)))
        for report, c in zip(reports, counts):
            report["novelty"] = novelty_report(c)
        summed = {n: [c[n] for c in counts if c[n] is not None] for n in NGRAM_SIZES}
        summary["total"]["novelty"] = novelty_report(
            {n: (sum(a for a, _ in v), sum(b for _, b in v)) if v else None for n, v in summed.items()})
    return summary
