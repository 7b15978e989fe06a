"""Characters <-> ids. A character is one Unicode code point of UTF-8 text."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from charrnn.errors import CharrnnError, UnknownCharactersError  # noqa: F401 (raised here, imported from here)
from charrnn.fileio import atomic_write_text

VOCAB_FORMAT = "charrnn-vocab"
_MAX_CODE_POINT = 0x10FFFF


def describe_chars(chars: Iterable[str], limit: int = 10) -> str:
    """'a' (U+0061), 'é' (U+00E9), ... for error messages: readable and unambiguous."""
    chars = sorted(set(chars))
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:limit])
    more = len(chars) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def code_points(text: str) -> np.ndarray:
    """The code points of text as a uint32 array, without a Python list in between."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class Vocab:
    """An ordered set of characters; a character's id is its index."""

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise CharrnnError(f"vocabulary entries must be single characters, got {c!r}")
            if "\ud800" <= c <= "\udfff":  # never in UTF-8 text, and cannot be saved as UTF-8
                raise CharrnnError(f"vocabulary entries must be characters, got the lone surrogate {c!r}")
        if len(set(chars)) != len(chars):
            raise CharrnnError("vocabulary has duplicate characters")
        if not chars:
            raise CharrnnError("vocabulary is empty")
        self.chars = chars
        self._cps = np.array([ord(c) for c in chars], dtype=np.uint32)
        self._table = None  # code point -> id, built on first encode

    @classmethod
    def from_chars(cls, chars: Iterable[str]) -> "Vocab":
        """A vocabulary of the given characters in code-point order."""
        return cls(sorted(set(chars)))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self.chars

    def find(self, char: str) -> int:
        """The id of a character, -1 if it is not in the vocabulary (as str.find)."""
        return self.chars.index(char) if char in self.chars else -1

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    @property
    def id_dtype(self):
        """The smallest unsigned type that holds every id."""
        n = len(self.chars)
        return np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.uint32

    def missing(self, chars: Iterable[str]) -> list[str]:
        """The characters of chars that are not in the vocabulary, sorted."""
        return sorted(set(chars) - set(self.chars))

    def lookup(self, cps: np.ndarray) -> np.ndarray:
        """Ids (int32) of an array of code points, -1 for those not in the vocabulary."""
        if self._table is None:
            # A dense table over all of Unicode (4.4 MB) makes encoding one gather.
            self._table = np.full(_MAX_CODE_POINT + 1, -1, dtype=np.int32)
            self._table[self._cps] = np.arange(len(self.chars), dtype=np.int32)
        return self._table[cps]

    def encode_code_points(self, cps: np.ndarray) -> np.ndarray:
        """Ids of an array of code points (compact dtype); unknown ones are an
        UnknownCharactersError that names them."""
        ids = self.lookup(cps)
        if ids.size and ids.min() < 0:
            unknown = {chr(int(cp)) for cp in np.unique(cps[ids < 0])}
            raise UnknownCharactersError(f"characters not in the vocabulary: {describe_chars(unknown)}", unknown)
        return ids.astype(self.id_dtype)

    def encode(self, text: str) -> np.ndarray:
        return self.encode_code_points(code_points(text))

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"format": VOCAB_FORMAT, "version": 1, "chars": self.chars}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:  # ValueError includes JSONDecodeError
            raise CharrnnError(f"not a vocabulary file (invalid JSON: {e})") from None
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise CharrnnError("not a charrnn vocabulary file (no \"format\": \"charrnn-vocab\")")
        if data.get("version") != 1:
            raise CharrnnError(f"unsupported vocabulary version {data.get('version')!r}")
        chars = data.get("chars")
        if not isinstance(chars, list):
            raise CharrnnError("vocabulary file has no list of \"chars\"")
        return cls(chars)

    def save(self, path) -> None:
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path) -> "Vocab":
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise CharrnnError(f"cannot read vocabulary {path}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CharrnnError(f"{path} is not a vocabulary file (not UTF-8 text)") from None
        try:
            return cls.from_json(text)
        except CharrnnError as e:
            raise CharrnnError(f"{path}: {e}") from None
