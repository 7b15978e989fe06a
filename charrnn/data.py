"""Text files -> compact id arrays -> train/validation splits -> (x, y) batches."""

from __future__ import annotations

import codecs
import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO
from pathlib import Path

import numpy as np

from charrnn.errors import CharrnnError, SettingError, named
from charrnn.vocab import UnknownCharactersError, Vocab, code_points, describe_chars

CHUNK_BYTES = 1 << 24  # decode 16 MB at a time: big files never exist as one str


def check_text_file(path) -> Path:
    """path if it names a readable, non-empty regular file; a CharrnnError otherwise."""
    p = Path(path)
    if not p.exists():
        raise CharrnnError(f"{p}: no such file")
    if p.is_dir():
        raise CharrnnError(f"{p} is a directory, not a text file")
    if not p.is_file():
        raise CharrnnError(f"{p} is not a regular file")
    if not os.access(p, os.R_OK):
        raise CharrnnError(f"{p}: permission denied")
    if p.stat().st_size == 0:
        raise CharrnnError(f"{p} is empty")
    return p


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, as hex (a corpus's fingerprint)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def iter_text(path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The UTF-8 text of a file in pieces; see decode_stream."""
    p = check_text_file(path)
    with open(p, "rb") as f:
        yield from decode_stream(f, str(p), chunk_bytes)


def decode_stream(stream: BinaryIO, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The UTF-8 text of a binary stream in pieces, a leading byte-order mark dropped.

    Refuses (CharrnnError, naming the stream as `name`) bytes that are not UTF-8,
    with their offset, and NUL characters, which mean binary data rather than text."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    first = True
    while True:
        raw = stream.read(chunk_bytes)
        final = not raw
        try:
            text = decoder.decode(raw, final=final)
        except UnicodeDecodeError as e:
            raise CharrnnError(f"{name} is not UTF-8 text (invalid byte at offset {offset + e.start}); "
                               "convert it first, e.g. iconv -f latin1 -t utf-8") from None
        if first and text.startswith("\ufeff"):
            text = text[1:]
        first = first and not text
        if "\x00" in text:
            raise CharrnnError(f"{name} looks like binary data (it contains NUL bytes), not text")
        if text:
            yield text
        if final:
            return
        offset += len(raw)


def scan_vocab(paths) -> Vocab:
    """The vocabulary of all characters in the given files."""
    seen = np.zeros(0, dtype=np.uint32)
    for path in paths:
        for text in iter_text(path):
            seen = np.union1d(seen, np.unique(code_points(text)))
    if seen.size == 0:
        raise CharrnnError("no characters found in " + ", ".join(str(p) for p in paths))
    return Vocab([chr(int(cp)) for cp in seen])


def load_ids(path, vocab: Vocab) -> np.ndarray:
    """The file as an array of ids in vocab's compact dtype. Characters missing from
    the vocabulary are an UnknownCharactersError that names them."""
    ids, _ = _load_ids(path, vocab, skip_unknown=False)
    return ids


def load_known_ids(path, vocab: Vocab) -> tuple[np.ndarray, Counter]:
    """The ids of the file's characters that are in the vocabulary, and how many
    times each character that is not was dropped."""
    return _load_ids(path, vocab, skip_unknown=True)


def _load_ids(path, vocab: Vocab, skip_unknown: bool) -> tuple[np.ndarray, Counter]:
    p = check_text_file(path)
    # A character takes at least one byte, so the file size bounds the length.
    out = np.empty(p.stat().st_size, dtype=vocab.id_dtype)
    unknown: Counter = Counter()
    n = 0
    for text in iter_text(p):
        cps = code_points(text)
        ids = vocab.lookup(cps)
        known = ids >= 0
        if not known.all():
            chars, counts = np.unique(cps[~known], return_counts=True)
            unknown.update({chr(int(cp)): int(k) for cp, k in zip(chars, counts)})
            ids = ids[known]
        out[n:n + ids.size] = ids
        n += ids.size
    if unknown and not skip_unknown:  # every unknown character of the file is named
        raise UnknownCharactersError(f"{p}: characters not in the vocabulary: {describe_chars(unknown)}", unknown)
    return out[:n], unknown


def split_train_val(ids: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The first (1 - val_frac) of the ids for training and the last val_frac for
    validation (views, no copies)."""
    if not 0.0 <= val_frac < 1.0:
        raise SettingError("val_frac", val_frac, "in [0, 1)")
    n_val = int(round(len(ids) * val_frac))
    if val_frac > 0 and n_val < 2:
        raise CharrnnError(f"{named('val_frac', val_frac)} leaves fewer than 2 validation characters "
                           f"of {len(ids)}; use a larger {named('val_frac')} or 0 for none")
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


class Batches:
    """torch-rnn's layout: the text cut into B contiguous streams, read T characters
    at a time, so the hidden state of stream b carries over from one batch to the next.

    Batch k of an epoch is x = streams[:, kT:(k+1)T].T and y = x shifted by one
    character, both (T, B). An epoch is every full batch once.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int):
        self.batch_size, self.seq_len = batch_size, seq_len
        per_stream = (len(ids) - 1) // batch_size
        self.steps_per_epoch = per_stream // seq_len
        if self.steps_per_epoch < 1:
            need = batch_size * seq_len + 1
            raise CharrnnError(
                f"the training text has {len(ids)} characters, too short for one batch of "
                f"{named('batch_size', batch_size)} x {named('seq_len', seq_len)} (needs {need}); "
                f"{fitting_batch_hint(len(ids), batch_size, seq_len)}")
        used = batch_size * per_stream
        self._x = ids[:used].reshape(batch_size, per_stream)
        self._y = ids[1:used + 1].reshape(batch_size, per_stream)

    @property
    def chars_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch k (0 <= k < steps_per_epoch): x, y as (T, B) int64 arrays."""
        cols = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return (np.ascontiguousarray(self._x[:, cols].T, dtype=np.int64),
                np.ascontiguousarray(self._y[:, cols].T, dtype=np.int64))


def fitting_batch_hint(n_chars: int, batch_size: int, seq_len: int) -> str:
    """Suggest flags that fit a short text, keeping one of the user's two choices."""
    if n_chars < 2:
        return "use a longer text"
    room = n_chars - 1  # a batch of B x T needs B * T + 1 characters
    options = []
    if room // seq_len >= 1:
        options.append(f"{named('batch_size', room // seq_len)} (with {named('seq_len', seq_len)})")
    if room // batch_size >= 1:
        options.append(f"{named('seq_len', room // batch_size)} (with {named('batch_size', batch_size)})")
    if not options:
        options.append(f"{named('batch_size', 1)} {named('seq_len', room)}")
    return " or ".join(options) + " would fit"
