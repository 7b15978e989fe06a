"""Line mode's data: one sample per non-empty line (a name, a title, a colour).

Each line is learnt on its own, from a zero state: the model reads the newline (its
start marker) and then the line, and learns to predict the line and then the newline
(its end). In a batch, lines are padded to the longest, the padded positions marked
with target -1 (no loss, no gradient), and lines of like length go together so that
padding stays small. The validation lines are a seeded random sample of the lines (a
list is often sorted: its last lines would all be Z names); a checkpoint keeps a hash
of every training and validation line, so a resumed run keeps its split and a sample
can be told to be a training line, a validation line or new.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from charrnn.data import iter_text
from charrnn.errors import CharrnnError, named
from charrnn.vocab import UnknownCharactersError, Vocab, code_points, describe_chars

END = "\n"  # the start marker and the end token
POOL = 64  # batches' worth of lines sorted by length together, so batches stay varied
LENGTH_STEP = 8  # batch lengths are rounded up to a multiple of this: few distinct shapes


def read_lines(path) -> list[str]:
    """The non-empty lines of a UTF-8 file, without their line ends (a Windows \\r\\n
    counts as one)."""
    text = "".join(iter_text(path))
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n") if line.strip("\r")]


def encode_lines(lines: list[str], vocab: Vocab, source) -> list[np.ndarray]:
    """Each line's ids (int64); characters outside the vocabulary are refused, named."""
    missing = vocab.missing(set("".join(lines)))
    if missing:
        raise UnknownCharactersError(f"{source}: characters not in the vocabulary: {describe_chars(missing)}",
                                     missing)
    table = vocab.lookup
    return [table(code_points(line)).astype(np.int64) for line in lines]


def line_hash(line: str) -> int:
    """A 64-bit hash of a line's text (BLAKE2b): what a checkpoint keeps of its lines."""
    return int.from_bytes(hashlib.blake2b(line.encode("utf-8"), digest_size=8).digest(), "little")


def line_hashes(lines) -> np.ndarray:
    """The sorted, distinct hashes of lines (uint64)."""
    return np.unique(np.array([line_hash(line) for line in lines], np.uint64))


def split_lines(lines: list[str], val_frac: float, seed: int, val_hashes: np.ndarray | None = None):
    """(training lines, validation lines): a random val_frac of them, drawn with the
    run's seed. A resumed run gives its validation lines' hashes: the same draw when
    it holds exactly those lines (the same corpus: a line that occurs twice may have a
    copy on each side, which the hashes alone cannot tell), else the lines whose hash
    is among them (the corpus changed; its old validation lines stay out of training)."""
    n_val = int(round(len(lines) * val_frac))
    if val_hashes is None and val_frac > 0 and n_val < 1:
        raise CharrnnError(f"{named('val_frac', val_frac)} leaves no validation line of {len(lines)}; use a "
                           f"larger {named('val_frac')} or 0 for none")
    in_val = np.zeros(len(lines), bool)
    in_val[np.random.default_rng([seed, 0x76616C]).permutation(len(lines))[:n_val]] = True
    if val_hashes is not None and not np.array_equal(line_hashes(x for x, v in zip(lines, in_val) if v), val_hashes):
        in_val = np.isin(np.array([line_hash(line) for line in lines], np.uint64), val_hashes)
    return [x for x, v in zip(lines, in_val) if not v], [x for x, v in zip(lines, in_val) if v]


def check_lengths(lines: list[str], seq_len: int, source) -> None:
    """Line mode learns each line in one piece of at most seq_len characters with its end."""
    longest = max(range(len(lines)), key=lambda i: len(lines[i]), default=None)
    if longest is not None and len(lines[longest]) + 1 > seq_len:
        raise CharrnnError(
            f"{source}: a line has {len(lines[longest])} characters, and line mode learns each line with its end in "
            f"one piece of at most {named('seq_len', seq_len)}; give {named('seq_len', len(lines[longest]) + 1)} "
            f"or more")


def pad(lines: list[np.ndarray], batch: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y (T, batch) int64 for up to `batch` lines: x is the start marker and the
    line, y the line and its end; padding (and rows without a line) has x = end and
    y = -1. T is the longest line plus one, rounded up to a multiple of LENGTH_STEP."""
    longest = max((len(line) for line in lines), default=0) + 1
    T = -(-longest // LENGTH_STEP) * LENGTH_STEP
    x = np.full((T, batch), end, np.int64)
    y = np.full((T, batch), -1, np.int64)
    for b, line in enumerate(lines):
        x[1:len(line) + 1, b] = line
        y[:len(line), b] = line
        y[len(line), b] = end
    return x, y


class LineBatches:
    """The training lines in batches of batch_size, shuffled anew each epoch from the
    run's seed (so a resumed run sees the batches the uninterrupted one would):
    batch_at(step) is a function of (seed, step) alone."""

    def __init__(self, lines: list[np.ndarray], batch_size: int, end: int, seed: int):
        if not lines:
            raise CharrnnError("no training lines: the corpus has no non-empty line outside the validation split")
        self.lines, self.batch_size, self.end, self.seed = lines, batch_size, end, seed
        self.steps_per_epoch = math.ceil(len(lines) / batch_size)
        self._epoch, self._order = None, None

    def _batches_of(self, epoch: int) -> list[np.ndarray]:
        """Line indices of each batch of an epoch: shuffled, then sorted by length within
        pools of POOL batches, cut into batches, and the batches shuffled."""
        rng = np.random.default_rng([self.seed, epoch, 0x6C696E65])
        order = rng.permutation(len(self.lines))
        lengths = np.array([len(line) for line in self.lines])
        pool = POOL * self.batch_size
        batches = []
        for p in range(0, len(order), pool):
            chunk = order[p:p + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch of optimiser step `step` (0-based): x, y (T, B) as pad() makes them."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self._batches_of(epoch)
        return pad([self.lines[i] for i in self._order[k]], self.batch_size, self.end)
