"""Generating text from a trained model: one sample or many generated together as
one batch, with temperature, top-k, top-p, stop strings and reproducible seeds.

Sample k of a batch (counting from 1) is exactly what generating it alone with its
own seed gives: the prime runs once and its state is copied to every row, each row
draws its random numbers from its own numpy Generator, and the engine's
Network.step computes every row bit for bit as it would alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from charrnn.config import SampleConfig
from charrnn.errors import CharrnnError, SettingError, UnknownCharactersError, named
from charrnn.model import RecurrentState
from charrnn.kernels.sampling import Decoding, History
from charrnn.lines import END
from charrnn.network import Network, make_decoding, run_to_end
from charrnn.vocab import Vocab, describe_chars

# Characters generated per call into the engine: one compiled loop runs this many
# steps for every row, so Python's per-character cost is gone, while streamed text
# still appears every few milliseconds.
BLOCK = 64
# Prime characters read per pass: a pass's arrays grow with its length (about 12 kB a
# character for an LSTM 2x256), and a prompt may be a megabyte.
PRIME_CHUNK = 1024


def prime_steps(net: Network, prime_ids: np.ndarray) -> Generator[None, None, RecurrentState]:
    """The state (batch 1) after reading all of a prime but its last character (which
    the first generation step reads), a chunk of PRIME_CHUNK at a time: it yields
    between chunks, so that a server can run other work there."""
    state = RecurrentState.zeros(net.cfg, 1, net.params.dtype)
    for start in range(0, prime_ids.size - 1, PRIME_CHUNK):
        if start:
            yield
        chunk = prime_ids[start:min(start + PRIME_CHUNK, prime_ids.size - 1)]
        _, state = net.forward(chunk.reshape(-1, 1), state)
    return state


def prime_state(net: Network, prime_ids: np.ndarray) -> RecurrentState:
    """prime_steps run to its end."""
    return run_to_end(prime_steps(net, prime_ids))


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
        raise UnknownCharactersError(f"{named('prime')} has characters not in the model's vocabulary: "
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


def random_start(vocab: Vocab, settings: SampleConfig) -> bool:
    """Without a prime or a newline to start from, the first character is random."""
    return not settings.prime and "\n" not in vocab


def encode_ban(vocab: Vocab, ban: str) -> np.ndarray:
    """(V,) bool: True for each character of ban. Characters the model does not know
    are refused (a typo would otherwise ban nothing), as is banning all of them."""
    missing = vocab.missing(ban)
    if missing:
        raise UnknownCharactersError(f"{named('ban')} has characters not in the model's vocabulary: "
                                     f"{describe_chars(missing)}", missing)
    mask = np.zeros(len(vocab), bool)
    mask[vocab.encode(ban).astype(np.int64)] = True
    if mask.all():
        raise CharrnnError(f"{named('ban')} bans every character of the model's vocabulary: nothing is left to draw")
    return mask


@dataclass
class Block:
    """What one call into the engine generated: streams[i] (the sample rows[i])
    produced ids[i, :counts[i]], and ended[i] says whether that was its last character."""

    streams: list  # [Stream]
    rows: np.ndarray  # (n,) each stream's index (for BatchSampler: its sample, 0-based, ascending)
    ids: np.ndarray  # (n, k)
    counts: np.ndarray  # (n,)
    ended: np.ndarray  # (n,) bool


class Stream:
    """One sample as it is generated: its settings, its own random numbers (numpy's
    default_rng(seed): the same seed, the same draws, whatever else runs beside it),
    how many characters it has made, and the end of its text, for stop strings that
    span engine calls (or begin in the prime). index: the caller's name for it.

    lines (a line-mode model): the sample is one line, read after the start marker
    (the prime is the line's beginning) and ended by the end token, which is not part
    of its text."""

    def __init__(self, vocab: Vocab, settings: SampleConfig, seed: int, index: int = 0, lines: bool = False):
        self.settings, self.seed, self.index = settings, seed, index
        self.prime_ids = encode_prime(vocab, settings.prime)
        self.end = vocab.chars.index(END) if lines else None
        if lines:
            self.prime_ids = np.concatenate([[self.end], self.prime_ids]).astype(np.int64)
        self.ended_line = False  # line mode: the end token came
        self.stops = list(settings.stop)
        encode_stops(vocab, self.stops)  # refuse stops the model can never produce
        # A stop may begin this many characters before a block (or in the prime).
        self.tail_width = max((len(s) for s in self.stops), default=1) - 1
        self.tail = self._tail(settings.prime)
        self.ban = encode_ban(vocab, settings.ban)
        if settings.beam is not None and self.prime_ids.size == 0 and "\n" not in vocab:
            raise CharrnnError(f"beam search ({named('beam')}) needs a {named('prime')}: the vocabulary has no "
                               "newline to start after")
        self.rng = np.random.default_rng(seed)
        self.count = 0  # characters generated
        self.stopped_by = -1  # the index of the stop string that ended it, or -1

    @property
    def remaining(self) -> int:
        return self.settings.length - self.count

    @property
    def dry_window(self) -> int:
        """How many of its last characters DRY reads: dry_last_n, or all it will ever
        have read if that is fewer (so that a huge dry_last_n costs no memory)."""
        return min(self.settings.dry_last_n, self.prime_ids.size + self.remaining + 1)

    @property
    def stop(self) -> str | None:
        """The stop string that ended it, None if none did."""
        return self.stops[self.stopped_by] if self.stopped_by >= 0 else None

    @property
    def ended(self) -> bool:
        """Whether it has ended: its line, a stop string, or its length."""
        return self.ended_line or self.stopped_by >= 0 or self.remaining <= 0

    def uniforms(self, k: int) -> np.ndarray:
        """The k numbers in [0, 1) of its next k draws (none drawn for argmax)."""
        return np.zeros(k) if self.settings.argmax else self.rng.random(k)

    def take(self, ids: np.ndarray, chars: list[str]) -> tuple[int, bool]:
        """Accept up to `remaining` of the ids just generated, cut before the end token
        (line mode) and after the first stop string that ends in them: (how many,
        whether the stream has ended)."""
        n = min(ids.size, self.remaining)
        if self.end is not None:
            hits = np.flatnonzero(ids[:n] == self.end)
            if hits.size:
                n, self.ended_line = int(hits[0]), True
        if self.stops:
            text = self.tail + "".join(chars[j] for j in ids[:n])
            first_end = None
            for index, stop in enumerate(self.stops):
                at = text.find(stop, max(0, len(self.tail) - len(stop) + 1))
                if at >= 0 and (first_end is None or at + len(stop) < first_end):
                    first_end, self.stopped_by = at + len(stop), index
            if first_end is not None:
                n = first_end - len(self.tail)
            self.tail = self._tail(text[:len(self.tail) + n])
        self.count += n
        return n, self.ended

    def _tail(self, text: str) -> str:
        """The last tail_width characters of text (all of a shorter one)."""
        return text[-self.tail_width:] if self.tail_width else ""


class Batch:
    """Streams generated side by side: each engine call makes a block of characters
    for every stream in the batch, each row by its own settings. Streams join (add)
    and leave (when they end, or drop) between calls; a row's characters do not
    depend on what else is in the batch (the engine computes each row bit for bit as
    it would alone, and each stream draws its own random numbers)."""

    def __init__(self, net: Network, vocab: Vocab):
        self.net, self.vocab = net, vocab
        self.streams: list[Stream] = []
        self.state = RecurrentState.zeros(net.cfg, 0, net.params.dtype)
        self.current = np.zeros(0, np.int64)
        # Each row's characters so far, for repetition control (no columns while no
        # stream uses it): see kernels.sampling.History.
        self.history = History(np.zeros((0, 0), np.int64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.streams)

    def add(self, streams: list[Stream], primed: dict[str, RecurrentState] | None = None) -> Block | None:
        """Start streams: run each distinct prime (all but its last character) once,
        batch 1, unless primed (prime -> prime_state's result) has its state already. A
        stream without a prime starts after a newline when the vocabulary has one, else
        from a random character, which is then its first generated character: the Block
        of those, if any (streams of length 0 never join)."""
        streams = [s for s in streams if s.remaining > 0]
        if not streams:
            return None
        primed = dict(primed or {})
        for s in streams:
            if s.settings.prime not in primed:
                primed[s.settings.prime] = prime_state(self.net, s.prime_ids)
        newline = self.vocab.find("\n")
        current = [int(s.prime_ids[-1]) if s.prime_ids.size else newline for s in streams]
        randoms = [i for i, s in enumerate(streams) if random_start(self.vocab, s.settings)]
        for i in randoms:
            current[i] = int(streams[i].rng.integers(len(self.vocab)))
        self._join(streams, [primed[s.settings.prime] for s in streams], current, randoms)
        if not randoms:
            return None
        chosen = [streams[i] for i in randoms]
        return self._collect(chosen, np.array([[current[i]] for i in randoms], np.int64))

    def _join(self, streams, states, current, randoms) -> None:
        self.streams += streams
        self.state = RecurrentState(*(np.concatenate([a] + [s.arrays()[i] for s in states], axis=1)
                                      for i, a in enumerate(self.state.arrays())))
        self.current = np.concatenate([self.current, np.asarray(current, np.int64)])
        # Repetition control reads what each row has read: its prime (and a random first character).
        contexts = [np.append(s.prime_ids, current[i]) if i in randoms else s.prime_ids
                    for i, s in enumerate(streams)]
        cap = max([self.history.ids.shape[1]] + [2 * s.dry_window for s in streams if s.settings.dry])
        ids = np.zeros((len(self.streams), cap), np.int64)
        old = self.history.ids.shape[0]
        ids[:old, :self.history.ids.shape[1]] = self.history.ids
        length = np.concatenate([self.history.length, np.zeros(len(streams), np.int64)])
        for i, (s, context) in enumerate(zip(streams, contexts)):
            if s.settings.dry:
                context = context[-s.dry_window:]
                ids[old + i, :context.size] = context
                length[old + i] = context.size
        self.history = History(ids, length)

    def advance(self, k: int) -> Block:
        """Up to k more characters for every stream (no more than the longest still
        needs); the streams that end leave the batch."""
        k = min(k, max(s.remaining for s in self.streams))
        uniforms = np.stack([s.uniforms(k) for s in self.streams], axis=1)
        ids, self.state = self.net.generate(self.current, self.state, uniforms, decoding=self._decoding(),
                                            history=self.history)
        self.current = ids[-1]
        return self._collect(list(self.streams), ids.T)

    def _decoding(self) -> Decoding:
        st = [s.settings for s in self.streams]
        banning = any(x.ban for x in st)
        return make_decoding(
            len(st), [x.temperature for x in st], [x.top_k or 0 for x in st],
            [1.0 if x.top_p is None else x.top_p for x in st], [x.argmax for x in st], [x.min_p or 0.0 for x in st],
            np.stack([s.ban for s in self.streams]) if banning else None, [x.dry_multiplier for x in st],
            [x.dry_base for x in st], [x.dry_allowed_length for x in st], [x.dry_last_n for x in st])

    def _collect(self, streams, ids) -> Block:
        """The Block of what streams made (ids: (n, k)), their ends applied; the ended
        streams leave."""
        counts, ended = np.zeros(len(streams), np.int64), np.zeros(len(streams), bool)
        for i, s in enumerate(streams):
            counts[i], ended[i] = s.take(ids[i], self.vocab.chars)
        self.drop([s for s, e in zip(streams, ended) if e])
        return Block(streams, np.array([s.index for s in streams], np.int64), ids, counts, ended)

    def drop(self, streams) -> None:
        """Take streams out of the batch (ended, or no longer wanted)."""
        leaving = {id(s) for s in streams}
        keep = np.array([id(s) not in leaving for s in self.streams], bool)
        if keep.all():
            return
        self.streams = [s for s, kept in zip(self.streams, keep) if kept]
        self.state, self.current = self.state.rows(keep), self.current[keep]
        self.history = History(np.ascontiguousarray(self.history.ids[keep]), self.history.length[keep])


class BatchSampler:
    """Generates settings.num_samples samples side by side (a Batch), a block of
    characters at a time; a row that ends (by a stop string) leaves the batch and
    costs nothing more. Every sample has at most settings.length generated
    characters. settings.seed must be given (not None); sample k (from 1) uses
    sample_seed(settings.seed, k)."""

    def __init__(self, net: Network, vocab: Vocab, settings: SampleConfig, block: int | None = None):
        if settings.seed is None:
            raise SettingError("seed", None, "a non-negative integer")
        self.net, self.vocab, self.settings = net, vocab, settings
        self.length, self.prime = settings.length, settings.prime
        self.block = BLOCK if block is None else block  # characters per engine call; 1 streams each
        self.seeds = [sample_seed(settings.seed, k) for k in range(1, settings.num_samples + 1)]
        Stream(vocab, settings, settings.seed, lines=net.cfg.lines)  # refuses a prime or stops it cannot read or make
        self.streams: list[Stream] = []

    @property
    def uses_randomness(self) -> bool:
        deterministic = self.settings.argmax or self.settings.beam is not None
        return self.length > 0 and (not deterministic or random_start(self.vocab, self.settings))

    def blocks(self) -> Iterator[Block]:
        """The samples' characters, block by block, until every sample has ended."""
        lines = self.net.cfg.lines
        self.streams = [Stream(self.vocab, self.settings, seed, i, lines) for i, seed in enumerate(self.seeds)]
        if self.settings.beam is not None:
            if self.length > 0:
                stream = self.streams[0]
                ids = beam_search(self.net, self.vocab, stream)
                n, ended = stream.take(ids, self.vocab.chars)
                yield Block([stream], np.zeros(1, np.int64), ids[None, :], np.array([n]), np.array([True]))
            return
        batch = Batch(self.net, self.vocab)
        first = batch.add(self.streams)
        if first is not None:
            yield first
        while len(batch):
            yield batch.advance(self.block)

    def stop_of(self, index: int) -> str | None:
        """The stop string that ended sample `index` (0-based), or None."""
        return self.streams[index].stop if self.streams else None


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
    {"sample", "seed", "text", "generated", "stop", "settings"}, and "source" ("train",
    "val" or "new") when source (line mode) is given."""

    def __init__(self, out: TextIO, sampler: BatchSampler, settings: dict | None = None, stream: bool = False,
                 source: Callable[[str], str] | None = None):
        self.out, self.sampler, self.settings, self.stream = out, sampler, settings, stream
        self.source, self.sources = source, []  # line mode: where each sample is found (see Model.source)
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
        text = None if self.buffer is None else self.sampler.prime + self.text(self.buffer.data[i, :self.count[i]])
        if self.source is not None and text is not None:
            self.sources.append(self.source(text))
        if self.settings is None:
            self._write("\n")
            self.open = False
            return
        record = {"sample": i + 1, "seed": self.sampler.seeds[i], "text": text, "generated": int(self.count[i]),
                  "stop": self.sampler.stop_of(i), "settings": self.settings}
        if self.source is not None:
            record["source"] = self.sources[-1]
        self._write(json.dumps(record) + "\n")

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)

    def _flush(self) -> None:
        if self.stream:
            self.out.flush()


def write_samples(sampler: BatchSampler, out: TextIO, settings: dict | None = None, stream: bool = False,
                  source: Callable[[str], str] | None = None) -> list[str]:
    """Generate and print every sample (see SamplePrinter); streaming, each character
    is generated, written and flushed on its own. On Ctrl-C end the line and keep
    what was printed, then let the KeyboardInterrupt through. With source (line
    mode), returns where each sample was found (see SamplePrinter)."""
    if stream:
        sampler.block = 1
    printer = SamplePrinter(out, sampler, settings, stream, source)
    try:
        printer.begin()
        for block in sampler.blocks():
            printer.step(block)
        printer.close()
    except KeyboardInterrupt:
        printer.interrupt()
        raise
    return printer.sources


class UniqueSampler(BatchSampler):
    """Line mode's unique samples: draws samples (sample k with sample_seed(seed, k),
    as BatchSampler would) until settings.num_samples distinct lines that source()
    calls "new" exist, or MAX_DRAWS per wanted line have been drawn; then gives those,
    numbered 1.., each with the seed that reproduces it alone. shortfall: how many
    are missing."""

    MAX_DRAWS = 50

    def __init__(self, net: Network, vocab: Vocab, settings: SampleConfig, source: Callable[[str], str],
                 block: int | None = None):
        super().__init__(net, vocab, settings, block)
        self.source, self.wanted, self.drawn, self.shortfall = source, settings.num_samples, 0, 0
        self.found_ids: list[np.ndarray] | None = None  # the lines found, once prepared

    def prepare(self) -> None:
        """Draw until the lines are found (or the draws run out); seeds and streams are
        then those of the lines found, so that a printer knows how many there are."""
        for _ in self.prepare_steps():
            pass

    def prepare_steps(self) -> Iterator[None]:
        """prepare, one engine call per step (for a server to run other work between)."""
        lines, seen, k = self.net.cfg.lines, set(), 1
        accepted: list[tuple[Stream, np.ndarray]] = []
        limit = self.MAX_DRAWS * self.wanted
        primed = None  # the prime's state: read once, a chunk a step, for every round of draws
        while len(accepted) < self.wanted and k <= limit and self.length > 0:
            n = min(2 * (self.wanted - len(accepted)) + 8, limit - k + 1)
            streams = [Stream(self.vocab, self.settings, sample_seed(self.settings.seed, j), j, lines)
                       for j in range(k, k + n)]
            k += n
            ids: dict[int, list[int]] = {s.index: [] for s in streams}
            if primed is None:
                primed = {self.prime: (yield from prime_steps(self.net, streams[0].prime_ids))}
            batch = Batch(self.net, self.vocab)
            blocks = [batch.add(streams, primed)]
            while len(batch):
                blocks.append(batch.advance(self.block))
                yield
            for block in filter(None, blocks):
                for i, s in enumerate(block.streams):
                    ids[s.index] += block.ids[i, :block.counts[i]].tolist()
            for s in streams:
                text = self.prime + self.vocab.decode(ids[s.index])
                if text not in seen and self.source(text) == "new" and len(accepted) < self.wanted:
                    accepted.append((s, np.array(ids[s.index], np.int64)))
                seen.add(text)
        self.drawn, self.shortfall = k - 1, self.wanted - len(accepted)
        self.seeds = [s.seed for s, _ in accepted]
        self.streams = [s for s, _ in accepted]
        self.found_ids = [ids for _, ids in accepted]
        for i, s in enumerate(self.streams):
            s.index = i

    def blocks(self) -> Iterator[Block]:
        if self.found_ids is None:
            self.prepare()
        for i, (s, ids) in enumerate(zip(self.streams, self.found_ids)):
            yield Block([s], np.array([i]), ids[None, :], np.array([ids.size]), np.array([True]))


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


def beam_search(net: Network, vocab: Vocab, stream: Stream) -> np.ndarray:
    """beam_steps run to its end: the ids of the continuation."""
    return run_to_end(beam_steps(net, vocab, stream))


def beam_steps(net: Network, vocab: Vocab, stream: Stream) -> Generator[None, None, np.ndarray]:
    """The most likely continuation of a stream's prime under the model (the highest sum
    of log-probabilities) among those that end at a stop string, at the end token
    (line mode) or at settings.length characters, found by beam search with
    settings.beam beams; banned characters are never chosen. Deterministic: ties go to
    the earlier beam, then the lower id. Returns (as the generator's value; it yields
    after each character, for a server to run other work between) the ids of the
    continuation, with the stop string or the end token that ended it."""
    cfg = stream.settings
    start = stream.prime_ids[-1] if stream.prime_ids.size else vocab.chars.index("\n")
    stops = stream.stops
    width = max((len(x) for x in stops), default=1)
    state = yield from prime_steps(net, stream.prime_ids)
    current, scores = np.array([start], np.int64), np.zeros(1)
    seqs: list[list[int]] = [[]]
    best_done, best_score = None, -np.inf
    for _ in range(cfg.length):
        logits, state = net.step(current, state)
        logp = _log_softmax(logits.astype(np.float64))
        logp[:, stream.ban] = -np.inf
        total = (scores[:, None] + logp).ravel()
        order = np.lexsort((np.arange(total.size), -total))[:cfg.beam]  # by score, then beam, then id
        order = order[np.isfinite(total[order])]
        keep, new_seqs, new_scores = [], [], []
        for flat in order:
            b, c = divmod(int(flat), logp.shape[1])
            seq = seqs[b] + [c]
            text = (cfg.prime + vocab.decode(seq))[-width:] if stops else ""
            if c == stream.end or any(text.endswith(x) for x in stops):
                if total[flat] > best_score:
                    best_done, best_score = seq, total[flat]
                continue
            keep.append(b)
            new_seqs.append(seq)
            new_scores.append(total[flat])
        if not keep or (best_done is not None and best_score >= max(new_scores)):
            break  # no open beam can beat the best finished one: log-probabilities only fall
        state = state.rows(np.array(keep))
        current = np.array([x[-1] for x in new_seqs], np.int64)
        seqs, scores = new_seqs, np.array(new_scores)
        yield
    else:
        if scores.max() > best_score:
            best_done = seqs[int(np.argmax(scores))]
    return np.array(best_done if best_done is not None else [], np.int64)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
