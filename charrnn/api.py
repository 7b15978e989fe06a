"""charrnn from Python: load a checkpoint to generate, stream and score text, or train.

    import charrnn
    model = charrnn.load("runs/shakespeare/best.safetensors")
    text = model.generate("ROMEO:", length=200, temperature=0.8, seed=7)
    run = charrnn.train("corpus.txt", out="runs/mine", max_time="5m")

Settings are keyword arguments named as in charrnn.config (the command line's flags
without the dashes, with underscores): the same settings and seed give the same text
as `charrnn sample`. Every problem a caller can fix is a CharrnnError subclass with a
one-line message.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from charrnn.checkpoint import Checkpoint, load_checkpoint
from charrnn.config import ModelConfig, SampleConfig, TrainConfig, settings_of, unknown_names
from charrnn.evaluate import score_text
from charrnn.lines import line_hash
from charrnn.network import Network
from charrnn.sample import BatchSampler, UniqueSampler
from charrnn.training import Trainer
from charrnn.errors import CharrnnError, UnknownCharactersError, named
from charrnn.vocab import describe_chars


@dataclass(frozen=True)
class Score:
    """How well a model predicts a text: the mean cross-entropy of each character given
    all before it (one stream from a zero state; a line-mode model scores each line on
    its own, its end included), as `charrnn evaluate` reports it, with the standard
    error of the mean over lines (line mode) or blocks of 1,000 characters (None when
    there is only one)."""

    nats_per_char: float
    bits_per_char: float
    perplexity: float
    chars: int  # characters predicted
    nats_per_char_stderr: float | None = None


@dataclass(frozen=True)
class LineScore:
    """One line of a scored text (see Model.score_lines): its number (from 1), text,
    nats and nats per predicted character (its end included)."""

    line: int
    text: str
    nats: float
    nats_per_char: float | None


class Model:
    """A trained model, ready to generate and score text (see charrnn.load).

    One Model runs one computation at a time (calls from several threads wait for each
    other; a stream's pieces let other calls run between them, in its thread or
    another); load the checkpoint again for a second engine."""

    def __init__(self, checkpoint: Checkpoint, path: str | None = None):
        self.checkpoint, self.path = checkpoint, path
        self.network = Network(checkpoint.config, checkpoint.params)
        self._lock = threading.Lock()

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.config

    @property
    def vocab(self) -> list[str]:
        """The characters the model knows; a character's id is its index."""
        return list(self.checkpoint.vocab.chars)

    def settings(self, prime: str = "", **settings) -> SampleConfig:
        """The sampling settings of a call: these (checked, by name), the others their
        defaults; a seed is chosen at random when none is given."""
        cfg = SampleConfig.from_given({**settings, "prime": prime})
        return cfg if cfg.seed is not None else cfg.replace(seed=secrets.randbelow(2**31))

    @property
    def lines(self) -> bool:
        """Whether the model was trained in line mode: a sample is one line."""
        return self.config.lines

    def source(self, line: str) -> str:
        """Line mode: where a line is found: "train" (a training line), "val" (a
        validation line) or "new"."""
        if self.checkpoint.lines is None:
            raise CharrnnError(f"{self.path} is not a line-mode model, so it keeps no lines to compare with")
        h = np.uint64(line_hash(line))
        for name, hashes in zip(("train", "val"), self.checkpoint.lines):
            i = np.searchsorted(hashes, h)
            if i < hashes.size and hashes[i] == h:
                return name
        return "new"

    def sampler(self, settings: SampleConfig, block: int | None = None) -> BatchSampler:
        """The sampler behind generate and stream (see charrnn.sample.BatchSampler)."""
        if settings.unique:
            if not self.lines:
                raise CharrnnError(f"{named('unique')} applies to line-mode models (trained with "
                                   f"{named('lines')}), whose samples are lines")
            return UniqueSampler(self.network, self.checkpoint.vocab, settings, self.source, block)
        return BatchSampler(self.network, self.checkpoint.vocab, settings, block)

    def generate(self, prime: str = "", **settings) -> str:
        """prime and up to `length` characters that follow it: str.

        settings: length (500), temperature (0.8), top_k, top_p, min_p, seed (random
        if not given), argmax, ban, dry_multiplier (with dry_base, dry_allowed_length,
        dry_last_n), beam, stop (strings that end the text where one first occurs; it
        is kept): every setting of `charrnn sample` (see charrnn.config.SampleConfig).
        The text is what `charrnn sample` prints for the same settings (without its
        final newline)."""
        return "".join(self._pieces(self._single(prime, settings), block=None))

    def stream(self, prime: str = "", **settings) -> Iterator[str]:
        """generate's text in pieces as it is generated: the prime first (if any), then
        the characters one at a time. The pieces join to what generate returns."""
        return self._pieces(self._single(prime, settings), block=1)

    def _single(self, prime: str, settings: dict) -> SampleConfig:
        if "num_samples" in settings:
            raise CharrnnError(f"{named('num_samples')} is not a setting of generate or stream; "
                               "use generate_many(n, ...)")
        return self.settings(prime, **settings)

    def _pieces(self, cfg: SampleConfig, block: int | None) -> Iterator[str]:
        # The lock is held for each block's computation, not between pieces: a caller
        # may hold two streams, or score text, while a stream is open.
        sampler = self.sampler(cfg, block)
        if cfg.prime:
            yield cfg.prime
        blocks = sampler.blocks()
        while True:
            with self._lock:
                piece = next(blocks, None)
            if piece is None:
                return
            yield self.checkpoint.vocab.decode(piece.ids[0, :piece.counts[0]])

    def generate_many(self, n: int, prime: str = "", **settings) -> list[str]:
        """n samples generated together as one batch: list of n str, each the prime and
        its own characters. Sample k (from 1) uses the seed `charrnn sample
        --num-samples n` gives it (sample 1 the seed itself), so each equals generating
        it alone with that seed. With unique=True (line mode): n distinct new lines,
        fewer if the model cannot find them in 50 draws per line."""
        cfg = self.settings(prime, num_samples=n, **settings)
        texts: dict[int, list[int]] = {}
        with self._lock:
            sampler = self.sampler(cfg)
            for block in sampler.blocks():
                for i, row in enumerate(block.rows):
                    texts.setdefault(int(row), []).extend(block.ids[i, :block.counts[i]].tolist())
        return [prime + self.checkpoint.vocab.decode(texts.get(i, [])) for i in range(len(sampler.seeds))]

    def score(self, text: str, skip_unknown: bool = False) -> Score:
        """How well the model predicts text (see Score). Characters the model does not
        know are an UnknownCharactersError naming them, or dropped with skip_unknown."""
        ids = self.score_input(text, skip_unknown)
        with self._lock:
            scored = score_text(self.network, ids, self.end_id, self.lines, self.cr_id)
        return Score(**scored.report())

    def score_lines(self, text: str, skip_unknown: bool = False) -> list[LineScore]:
        """Every line of text scored, as `charrnn evaluate --per-line` does: for ranking
        candidates (names by likelihood) or finding odd lines."""
        ids = self.score_input(text, skip_unknown)
        with self._lock:
            scored = score_text(self.network, ids, self.end_id, self.lines, self.cr_id)
        decode = self.checkpoint.vocab.decode
        return [LineScore(i, decode(ids[a:b]), nats, nats / count if count else None)
                for i, (a, b, nats, count) in enumerate(scored.lines, start=1)]

    @property
    def end_id(self) -> int:
        """The id of the newline (line mode's start marker and end token), -1 if there is none."""
        return self.checkpoint.vocab.find("\n")

    @property
    def cr_id(self) -> int:
        """The id of \\r (line mode scores it as part of a line's end), -1 if there is none."""
        return self.checkpoint.vocab.find("\r")

    def score_input(self, text: str, skip_unknown: bool = False) -> np.ndarray:
        """The ids score() runs on, or the error it raises (a server checks a request
        before it queues it)."""
        vocab = self.checkpoint.vocab
        missing = vocab.missing(text)
        if missing and not skip_unknown:
            raise UnknownCharactersError(f"the text has characters not in the model's vocabulary: "
                                         f"{describe_chars(missing)}", missing)
        ids = vocab.encode("".join(c for c in text if c not in set(missing))).astype(np.int64)
        if self.lines and not (ids != self.end_id).any():
            raise CharrnnError("the text has no line with known characters: nothing to score")
        if not self.lines and ids.size < 2:
            raise CharrnnError(f"the text has {ids.size} known character{'s' if ids.size != 1 else ''}: at least "
                               "2 are needed to predict one from the other")
        return ids


def load(path) -> Model:
    """A Model from a checkpoint file (.safetensors, as `charrnn train` writes them)."""
    return Model(load_checkpoint(path, with_training_state=False), str(path))


@dataclass(frozen=True)
class TrainingRun:
    """What charrnn.train did: steps taken in all, seconds of training, the best
    validation loss (nats/char) and its step, the checkpoints written, and whether
    Ctrl-C or SIGTERM cut it short."""

    step: int
    elapsed: float
    best_val_loss: float | None
    best_step: int | None
    last: str
    best: str
    interrupted: bool

    def load(self, which: str = "best") -> Model:
        """The model of the best (or the last) checkpoint."""
        return load(self.best if which == "best" else self.last)


def trainer(corpus, out, vocab=None, resume=None, overwrite: bool = False, progress: bool = True,
            **settings) -> Trainer:
    """A Trainer set up from settings by name (model and training settings alike)."""
    model_names, train_names = settings_of(ModelConfig), settings_of(TrainConfig)
    unknown = [name for name in settings if name not in model_names and name not in train_names]
    if unknown:
        raise unknown_names(unknown, [*model_names, *train_names], "training settings")
    model = {k: v for k, v in settings.items() if k in model_names}
    train = {k: v for k, v in settings.items() if k in train_names}
    return Trainer(corpus, out, model, train, vocab_path=vocab, resume=resume, overwrite=overwrite,
                   progress=progress)


def train(corpus, out, *, vocab=None, resume=None, overwrite: bool = False, progress: bool = True,
          **settings) -> TrainingRun:
    """Train on a UTF-8 text file into the run directory `out`, as `charrnn train` does.

    settings: any model or training setting (cell, layers, hidden, embed, dropout,
    batch_size, seq_len, lr, ..., max_steps, max_epochs, max_time as seconds or text
    such as "5m"); without a budget, 5 minutes. vocab: a vocabulary file; resume: a
    checkpoint to continue; overwrite: replace a run already in `out`. progress: a
    progress bar on stderr (when it is a terminal)."""
    summary = trainer(corpus, out, vocab, resume, overwrite, progress, **settings).run()
    return TrainingRun(summary["step"], summary["elapsed"], summary["best_val_loss"], summary["best_step"],
                       summary["last"], summary["best"], summary["interrupted"])
