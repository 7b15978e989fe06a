"""How much of a text is new: the fraction of its n-grams (runs of n characters,
counted at every position) that occur nowhere verbatim in a training corpus.

Exact, in memory that does not grow with the corpus: each n-gram of the texts is
hashed (a polynomial rolling hash of its code points, modulo 2**64), the corpus is
read in segments, and every corpus n-gram whose hash matches one of the texts' is
compared character by character with it before it counts. A hash collision can
therefore cost a comparison, never a wrong answer. Memory is a few arrays the size
of the texts plus one segment of the corpus; the corpus is read once for all texts
and sizes, and reading stops as soon as every n-gram of the texts has been found.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

NGRAM_SIZES = (20, 40)
SEGMENT = 1 << 20  # corpus characters hashed at a time
_BATCH = 1 << 16  # n-grams compared at a time
_BASE = 0x9E3779B97F4A7C15  # odd, so multiplying by it modulo 2**64 loses nothing


def _power(k: int) -> np.uint64:
    return np.uint64(pow(_BASE, k, 1 << 64))


def window_hashes(cps: np.ndarray, sizes: Sequence[int]) -> dict[int, np.ndarray]:
    """For each n in sizes, h[i] = sum of cps[i + j] * BASE**(n - 1 - j) mod 2**64 over
    j < n, for every window start i (none when cps is shorter than n). Built by
    doubling (windows of 1, 2, 4, ... characters), a few passes over the array."""
    c = np.asarray(cps).astype(np.uint64)
    levels = {1: c}
    k = 1
    while 2 * k <= max(sizes) and c.size >= 2 * k:
        h = levels[k]
        levels[2 * k] = h[:h.size - k] * _power(k) + h[k:]
        k *= 2
    out = {}
    for n in sizes:
        if c.size < n:
            out[n] = np.zeros(0, np.uint64)
            continue
        acc, width = None, 0
        for bit in reversed(range(n.bit_length())):  # n as a sum of powers of two
            size = 1 << bit
            if not n & size:
                continue
            if acc is None:
                acc, width = levels[size], size
            else:
                m = c.size - (width + size) + 1
                acc = acc[:m] * _power(size) + levels[size][width:width + m]
                width += size
        out[n] = acc
    return out


def _same_windows(a: np.ndarray, a_starts: np.ndarray, b: np.ndarray, b_starts: np.ndarray, n: int) -> np.ndarray:
    """Whether a[a_starts[i]:][:n] == b[b_starts[i]:][:n], for every i."""
    if a_starts.size == 0:
        return np.zeros(0, bool)
    wa, wb = sliding_window_view(a, n), sliding_window_view(b, n)
    out = np.empty(a_starts.size, bool)
    for s in range(0, a_starts.size, _BATCH):
        e = s + _BATCH
        out[s:e] = (wa[a_starts[s:e]] == wb[b_starts[s:e]]).all(axis=1)
    return out


class _Grams:
    """The n-grams of the texts for one n, sorted into groups of equal hash. Each
    n-gram has a representative: the first n-gram of its group with the same
    characters (a group holds more than one only after a collision inside the texts).
    found[r] says whether the corpus holds representative r's characters."""

    def __init__(self, joined: np.ndarray, offsets: np.ndarray, hashes: list[np.ndarray], n: int):
        self.joined, self.n = joined, n
        starts = np.concatenate([offsets[t] + np.arange(h.size) for t, h in enumerate(hashes)])
        order = np.argsort(np.concatenate(hashes), kind="stable")
        self.pos = starts[order]  # window starts in joined, by hash
        sorted_hashes = np.concatenate(hashes)[order]
        first = np.r_[True, sorted_hashes[1:] != sorted_hashes[:-1]] if self.pos.size else np.zeros(0, bool)
        self.group_start = np.flatnonzero(first)
        self.hashes = sorted_hashes[self.group_start]
        group_of = np.cumsum(first) - 1
        self.rep = self.pos[self.group_start][group_of]
        same = _same_windows(joined, self.pos, joined, self.rep, n)
        self.single = np.ones(self.hashes.size, bool)  # every n-gram of the group is alike
        for g in np.unique(group_of[~same]):
            self.single[g] = False
            entries = slice(self.group_start[g], self.group_start[g + 1] if g + 1 < self.group_start.size else None)
            windows = sliding_window_view(joined, n)[self.pos[entries]]
            _, index, inverse = np.unique(windows, axis=0, return_index=True, return_inverse=True)
            self.rep[entries] = self.pos[entries][index[inverse.ravel()]]
        self.found = np.zeros(joined.size, bool)
        self.active = np.ones(self.hashes.size, bool)  # groups with a representative not found yet
        self.text_of = np.searchsorted(offsets, self.pos, side="right") - 1
        # A quick first test for the corpus's windows: a table indexed by the top bits
        # of a hash, true where an active group's hash has those bits (>= 16 slots per
        # group, at most 64 MB). Only the few windows that pass are looked up.
        bits = int(np.clip(np.ceil(np.log2(16 * max(1, self.hashes.size))), 16, 26))
        self.shift = np.uint64(64 - bits)
        self.filter = np.zeros(1 << bits, bool)
        self.filter[self.hashes >> self.shift] = True

    def scan(self, segment: np.ndarray, hashes: np.ndarray) -> None:
        """Mark the representatives that occur among the windows of a corpus segment."""
        if not self.active.any() or hashes.size == 0:
            return
        at = np.flatnonzero(self.filter[hashes >> self.shift])
        groups = np.minimum(np.searchsorted(self.hashes, hashes[at]), self.hashes.size - 1)
        hit = (self.hashes[groups] == hashes[at]) & self.active[groups]
        at, groups = at[hit], groups[hit]
        if at.size == 0:
            return
        single = self.single[groups]
        reps = self.pos[self.group_start[groups[single]]]
        self.found[reps[_same_windows(segment, at[single], self.joined, reps, self.n)]] = True
        for p, group in zip(at[~single], groups[~single]):  # only after a collision in the texts
            end = self.group_start[group + 1] if group + 1 < self.group_start.size else None
            for r in np.unique(self.rep[self.group_start[group]:end]):
                if not self.found[r] and np.array_equal(segment[p:p + self.n], self.joined[r:r + self.n]):
                    self.found[r] = True
        active = ~np.logical_and.reduceat(self.found[self.rep], self.group_start)
        if active.sum() < self.active.sum():
            self.filter[:] = False
            self.filter[self.hashes[active] >> self.shift] = True
        self.active = active

    def novel_counts(self, n_texts: int) -> np.ndarray:
        return np.bincount(self.text_of[~self.found[self.rep]], minlength=n_texts)


def _segments(chunks: Iterable[np.ndarray], overlap: int):
    """The corpus's code points in segments of about SEGMENT, each starting with the
    last `overlap` code points of the one before, so that every window of up to
    overlap + 1 characters lies whole in some segment."""
    carry = np.zeros(0, np.uint32)
    for chunk in chunks:
        for s in range(0, chunk.size, SEGMENT):
            segment = np.concatenate([carry, chunk[s:s + SEGMENT]])
            yield segment
            carry = segment[max(0, segment.size - overlap):]


def novelty(texts: Sequence[np.ndarray], corpus_chunks: Iterable[np.ndarray],
            sizes: Sequence[int] = NGRAM_SIZES) -> list[dict[int, tuple[int, int] | None]]:
    """For each text (an array of code points) and each n in sizes: (novel, total),
    the number of its n-grams that do not occur in the corpus and the number of its
    n-grams, or None when the text is shorter than n (it has no n-gram).
    corpus_chunks yields the corpus's code points, in pieces of any size."""
    texts = [np.asarray(t, np.uint32) for t in texts]
    offsets = np.cumsum([0] + [t.size for t in texts])[:-1]
    joined = np.concatenate(texts) if texts else np.zeros(0, np.uint32)
    per_text = [window_hashes(t, sizes) for t in texts]
    grams = {n: _Grams(joined, offsets, [h[n] for h in per_text], n) for n in sizes}
    for segment in _segments(corpus_chunks, max(sizes) - 1):
        hashes = window_hashes(segment, sizes)
        for n in sizes:
            grams[n].scan(segment, hashes[n])
        if not any(g.active.any() for g in grams.values()):
            break  # every n-gram of the texts is in the corpus: the rest cannot change that
    novel = {n: grams[n].novel_counts(len(texts)) for n in sizes}
    return [{n: (int(novel[n][t]), per_text[t][n].size) if per_text[t][n].size else None for n in sizes}
            for t in range(len(texts))]


def fraction(counts: tuple[int, int] | None) -> float | None:
    """novel / total, or None for a text without n-grams."""
    return None if counts is None else counts[0] / counts[1]
