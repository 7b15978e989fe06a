"""Generating text from a trained model: one sample or many generated together as
one batch, with temperature, top-k, top-p, stop strings and reproducible seeds.

Sample k of a batch (counting from 1) is exactly what generating it alone with its
own seed gives: the prime runs once and its state is copied to every row, each row
draws its random numbers from its own numpy Generator, and the engine's
Network.step computes every row bit for bit as it would alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from charrnn.config import SampleConfig
from charrnn.errors import CharrnnError, SettingError, UnknownCharactersError, named
from charrnn.model import RecurrentState
from charrnn.network import Network
from charrnn.vocab import Vocab, describe_chars

# Characters generated per call into the engine: one compiled loop runs this many
# steps for every row, so Python's per-character cost is gone, while streamed text
# still appears every few milliseconds.
BLOCK = 64


def sample_seed(seed: int, k: int) -> int:
    """The seed of sample k (counting from 1) of a batch started with `seed`.

    Sample 1 uses the seed itself, so adding --num-samples never changes the first
    sample. Sample k >= 2 uses the first 64-bit word of numpy's
    SeedSequence([seed, k]), shifted right by 11 bits: a number below 2**53, which
    JSON readers that use doubles keep exactly. Nearby seeds (7 and 8) therefore
    share no samples, and generating alone with sample k's seed reproduces it."""
    if k == 1:
        return int(seed)
    word = np.random.SeedSequence([int(seed), int(k)]).generate_state(1, np.uint64)[0]
    return int(word >> np.uint64(11))


def encode_prime(vocab: Vocab, prime: str) -> np.ndarray:
    missing = vocab.missing(prime)
    if missing:
        raise UnknownCharactersError(f"the prime text has characters not in the model's vocabulary: "
                                     f"{describe_chars(missing)}", missing)
    return vocab.encode(prime).astype(np.int64)


def encode_stops(vocab: Vocab, stops: Sequence[str]) -> list[np.ndarray]:
    """The ids of each stop string; one the model can never produce is refused."""
    out = []
    for s in stops:
        if not s:
            raise CharrnnError(f"{named('stop')} must not be empty")
        missing = vocab.missing(s)
        if missing:
            raise UnknownCharactersError(f"{named('stop', repr(s))} can never occur: {describe_chars(missing)} "
                                         f"not in the model's vocabulary", missing)
        out.append(vocab.encode(s).astype(np.int64))
    return out


@dataclass
class Block:
    """What one call into the engine generated: the sample rows[i] produced
    ids[i, :counts[i]], and ended[i] says whether that was its last character."""

    rows: np.ndarray  # (n,) samples, 0-based, ascending
    ids: np.ndarray  # (n, k)
    counts: np.ndarray  # (n,)
    ended: np.ndarray  # (n,) bool


class BatchSampler:
    """Generates settings.num_samples samples side by side, a block of characters at a
    time for all rows that are still going; a row that ends (by a stop string) leaves
    the batch and costs nothing more. Every sample has at most settings.length
    generated characters. settings.seed must be given (not None)."""

    def __init__(self, net: Network, vocab: Vocab, settings: SampleConfig, block: int | None = None):
        if settings.seed is None:
            raise SettingError("seed", None, "a non-negative integer")
        self.net, self.vocab, self.settings = net, vocab, settings
        self.length, self.prime, self.stops = settings.length, settings.prime, list(settings.stop)
        self.block = BLOCK if block is None else block  # characters per engine call; 1 streams each
        self.prime_ids = encode_prime(vocab, self.prime)
        encode_stops(vocab, self.stops)  # refuse stops the model can never produce
        # A stop may begin this many characters before a block (or in the prime).
        self.tail_width = max((len(s) for s in self.stops), default=1) - 1
        self.seeds = [sample_seed(settings.seed, k) for k in range(1, settings.num_samples + 1)]
        # Which stop string ended each sample (index into stops), or -1.
        self.stopped_by = np.full(settings.num_samples, -1, np.int64)

    @property
    def random_start(self) -> bool:
        """Without a prime or a newline to start from, the first character is random."""
        return not self.prime and "\n" not in self.vocab

    @property
    def uses_randomness(self) -> bool:
        return self.length > 0 and (not self.settings.argmax or self.random_start)

    def _start_state(self, n: int) -> RecurrentState:
        """The state after all but the last prime character, computed once (batch 1)
        and copied to n rows."""
        state = RecurrentState.zeros(self.net.cfg, 1, self.net.params.dtype)
        if self.prime_ids.size > 1:
            _, state = self.net.forward(self.prime_ids[:-1].reshape(-1, 1), state)
        return RecurrentState(*(np.repeat(a, n, axis=1) for a in state.arrays()))

    def blocks(self) -> Iterator[Block]:
        """The samples' characters, block by block, until every sample has ended."""
        n, length, d = len(self.seeds), self.length, self.settings
        self.stopped_by[:] = -1
        if length == 0:
            return
        rngs = [np.random.default_rng(s) for s in self.seeds]
        state = self._start_state(n)
        rows = np.arange(n)
        tails = [self._tail(self.prime)] * n
        if self.prime:
            current = np.full(n, self.prime_ids[-1], np.int64)
        elif not self.random_start:
            current = np.full(n, self.vocab.chars.index("\n"), np.int64)
        else:
            current = np.array([rng.integers(len(self.vocab)) for rng in rngs], np.int64)
        t = 0
        if self.random_start:
            block = self._block(rows, current.reshape(-1, 1), tails, t + 1)
            yield block
            t = 1
            rows, current, state, tails = self._drop(block.ended, rows, current, state, tails)
        top_k = 0 if d.top_k is None else d.top_k
        top_p = 1.0 if d.top_p is None else d.top_p
        while t < length and rows.size:
            k = min(self.block, length - t)
            if d.argmax:
                uniforms = np.zeros((k, rows.size))
            else:
                uniforms = np.stack([rngs[i].random(k) for i in rows], axis=1)
            ids, state = self.net.generate(current, state, uniforms, d.temperature, top_k, top_p, d.argmax)
            t += k
            block = self._block(rows, ids.T, tails, t)
            yield block
            current = ids[-1]
            rows, current, state, tails = self._drop(block.ended, rows, current, state, tails)

    def _block(self, rows, ids, tails, t) -> Block:
        """A Block of the ids (n, k) just generated, each row cut after the first stop
        string that ends in it; tails are the last characters of every row's text
        (prime included), updated here, so that a stop may span blocks or begin in
        the prime."""
        n, k = ids.shape
        counts = np.full(n, k, np.int64)
        ended = np.full(n, t >= self.length)
        if not self.stops:
            return Block(rows, ids, counts, ended)
        chars = self.vocab.chars
        for i in range(n):
            text = tails[i] + "".join(chars[j] for j in ids[i])
            first_end, which = None, -1
            for index, stop in enumerate(self.stops):
                at = text.find(stop, max(0, len(tails[i]) - len(stop) + 1))
                if at >= 0 and (first_end is None or at + len(stop) < first_end):
                    first_end, which = at + len(stop), index
            if first_end is not None:
                counts[i] = first_end - len(tails[i])
                ended[i] = True
                self.stopped_by[rows[i]] = which
            tails[i] = self._tail(text)
        return Block(rows, ids, counts, ended)

    def _tail(self, text: str) -> str:
        """The last tail_width characters of text (all of a shorter one)."""
        return text[-self.tail_width:] if self.tail_width else ""

    @staticmethod
    def _drop(ended, rows, current, state, tails):
        """Remove the rows that ended from the batch."""
        if not ended.any():
            return rows, current, state, tails
        keep = ~ended
        return rows[keep], current[keep], state.rows(keep), [tail for tail, k in zip(tails, keep) if k]

    def stop_of(self, index: int) -> str | None:
        """The stop string that ended sample `index` (0-based), or None."""
        k = int(self.stopped_by[index])
        return None if k < 0 else self.stops[k]


class _IdBuffer:
    """The characters generated so far by every row: (rows, characters), grown by doubling."""

    def __init__(self, n: int, dtype):
        self.data = np.zeros((n, 256), dtype)

    def put(self, row: int, start: int, ids) -> None:
        while start + len(ids) > self.data.shape[1]:
            grown = np.zeros((self.data.shape[0], 2 * self.data.shape[1]), self.data.dtype)
            grown[:, :self.data.shape[1]] = self.data
            self.data = grown
        self.data[row, start:start + len(ids)] = ids


class SamplePrinter:
    """Prints the samples of a batch in order, each as soon as it can be: the first
    block by block while it is generated, the others from a buffer once the ones
    before them are complete.

    As text, each sample is its prime and generated characters and a newline; with
    several samples each is preceded by a header line naming its number and seed,
    and followed by a blank line. As JSON (settings given), each sample is one line:
    {"sample", "seed", "text", "generated", "stop", "settings"}."""

    def __init__(self, out: TextIO, sampler: BatchSampler, settings: dict | None = None, stream: bool = False):
        self.out, self.sampler, self.settings, self.stream = out, sampler, settings, stream
        n = len(sampler.seeds)
        self.n, self.head = n, 0
        self.count = np.zeros(n, np.int64)  # characters generated so far
        self.ended = np.zeros(n, bool)
        self.written = 0  # generated characters of the head sample already written
        self.open = False  # the head sample's text has begun
        self.buffer = _IdBuffer(n, sampler.vocab.id_dtype) if n > 1 or settings is not None else None
        self.code_points = np.array([ord(c) for c in sampler.vocab.chars], np.uint32)

    def text(self, ids) -> str:
        return self.code_points[ids].tobytes().decode("utf-32-le")

    def begin(self) -> None:
        """Start writing the first sample (its header and prime), before any step."""
        self._begin()
        self._flush()

    def step(self, block: Block) -> None:
        for i, row in enumerate(block.rows):
            ids = block.ids[i, :block.counts[i]]
            if self.buffer is not None:
                self.buffer.put(row, int(self.count[row]), ids)
            elif row == self.head and self.open:
                self._write(self.text(ids))
                self.written += ids.size
            self.count[row] += ids.size
        self.ended[block.rows[block.ended]] = True
        if self.open and self.buffer is not None:
            self._catch_up()
        self._advance()
        self._flush()

    def close(self) -> None:
        """Generation is over: every sample has ended; write what is left."""
        self.ended[:] = True
        self._advance()
        self.out.flush()

    def interrupt(self) -> None:
        """Ctrl-C: end the line of a sample cut short, keep what was written."""
        if self.open and self.settings is None:
            self._write("\n")
        self.out.flush()

    def _begin(self) -> None:
        if self.head >= self.n or self.settings is not None:
            return
        if self.n > 1:
            k = self.head + 1
            self._write(("\n" if k > 1 else "") + f"--- sample {k} of {self.n}, seed {self.sampler.seeds[self.head]} ---\n")
        self._write(self.sampler.prime)
        self.open, self.written = True, 0
        self._catch_up()

    def _catch_up(self) -> None:
        """Write the head sample's buffered characters that are not written yet."""
        end = int(self.count[self.head])
        if self.buffer is not None and end > self.written:
            self._write(self.text(self.buffer.data[self.head, self.written:end]))
        self.written = end

    def _advance(self) -> None:
        while self.head < self.n and self.ended[self.head]:
            self._finish(self.head)
            self.head += 1
            self._begin()

    def _finish(self, i: int) -> None:
        if self.settings is None:
            self._write("\n")
            self.open = False
            return
        ids = self.buffer.data[i, :self.count[i]]
        record = {"sample": i + 1, "seed": self.sampler.seeds[i], "text": self.sampler.prime + self.text(ids),
                  "generated": int(self.count[i]), "stop": self.sampler.stop_of(i), "settings": self.settings}
        self._write(json.dumps(record) + "\n")

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)

    def _flush(self) -> None:
        if self.stream:
            self.out.flush()


def write_samples(sampler: BatchSampler, out: TextIO, settings: dict | None = None, stream: bool = False) -> None:
    """Generate and print every sample (see SamplePrinter); streaming, each character
    is generated, written and flushed on its own. On Ctrl-C end the line and keep
    what was printed, then let the KeyboardInterrupt through."""
    if stream:
        sampler.block = 1
    printer = SamplePrinter(out, sampler, settings, stream)
    try:
        printer.begin()
        for block in sampler.blocks():
            printer.step(block)
        printer.close()
    except KeyboardInterrupt:
        printer.interrupt()
        raise


def generate_many(net: Network, vocab: Vocab, settings: SampleConfig) -> list[str]:
    """The generated text (without the prime) of each of settings.num_samples samples."""
    sampler = BatchSampler(net, vocab, settings)
    out: list[list[int]] = [[] for _ in range(settings.num_samples)]
    for block in sampler.blocks():
        for i, row in enumerate(block.rows):
            out[row].extend(block.ids[i, :block.counts[i]].tolist())
    return [vocab.decode(ids) for ids in out]


def generate(net: Network, vocab: Vocab, length: int, temperature: float = 1.0, prime: str = "",
             seed: int = 0, argmax: bool = False, on_char: Callable[[str], None] | None = None,
             top_k: int | None = None, top_p: float | None = None, stops: Sequence[str] = ()) -> str:
    """Up to `length` new characters following prime (which is not part of the result).

    Each character is drawn from softmax(logits / temperature), restricted to the
    top_k and then the top_p nucleus (or the most likely one with argmax), using one
    uniform number from numpy's default_rng(seed), so the same seed gives the same
    text. Without a prime the model starts after a newline when the vocabulary has
    one (the start of a line), else from a random character, which is then the first
    one generated. A stop string ends the text where it first occurs (kept)."""
    settings = SampleConfig(length=length, temperature=temperature, top_k=top_k, top_p=top_p, prime=prime,
                            seed=seed, argmax=argmax, stop=tuple(stops))
    out: list[str] = []
    for block in BatchSampler(net, vocab, settings).blocks():
        text = vocab.decode(block.ids[0, :block.counts[0]])
        out.append(text)
        if on_char is not None:
            for char in text:
                on_char(char)
    return "".join(out)
