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
from pathlib import Path

from charrnn.checkpoint import Checkpoint, load_checkpoint
from charrnn.config import ModelConfig, SampleConfig, TrainConfig, settings_of, unknown_names
from charrnn.evaluate import perplexity_report, score_ids
from charrnn.network import Network
from charrnn.sample import BatchSampler
from charrnn.training import Trainer
from charrnn.errors import CharrnnError, UnknownCharactersError, named
from charrnn.vocab import describe_chars


@dataclass(frozen=True)
class Score:
    """How well a model predicts a text: the mean cross-entropy of each character given
    all before it (one stream from a zero state), as `charrnn evaluate` reports it."""

    nats_per_char: float
    bits_per_char: float
    perplexity: float
    chars: int  # characters predicted: the text's length less one


class Model:
    """A trained model, ready to generate and score text (see charrnn.load).

    One Model runs one call at a time (calls from several threads wait for each other);
    load the checkpoint again for a second engine."""

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
        cfg = SampleConfig(prime=prime, **SampleConfig.check_values(settings))
        return cfg if cfg.seed is not None else cfg.replace(seed=secrets.randbelow(2**31))

    def sampler(self, settings: SampleConfig, block: int | None = None) -> BatchSampler:
        """The sampler behind generate and stream (see charrnn.sample.BatchSampler)."""
        return BatchSampler(self.network, self.checkpoint.vocab, settings, block)

    def generate(self, prime: str = "", **settings) -> str:
        """prime and up to `length` characters that follow it: str.

        settings: length (500), temperature (0.8), top_k, top_p, seed (random if not
        given), argmax, stop (strings that end the text where one first occurs; it is
        kept), as `charrnn sample` takes them. The text is what `charrnn sample` prints
        for the same settings (without its final newline)."""
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
        with self._lock:
            sampler = self.sampler(cfg, block)
            if cfg.prime:
                yield cfg.prime
            for piece in sampler.blocks():
                yield self.checkpoint.vocab.decode(piece.ids[0, :piece.counts[0]])

    def generate_many(self, n: int, prime: str = "", **settings) -> list[str]:
        """n samples generated together as one batch: list of n str, each the prime and
        its own characters. Sample k (from 1) uses the seed `charrnn sample
        --num-samples n` gives it (sample 1 the seed itself), so each equals generating
        it alone with that seed."""
        cfg = self.settings(prime, num_samples=n, **settings)
        texts: list[list[int]] = [[] for _ in range(n)]
        with self._lock:
            for block in self.sampler(cfg).blocks():
                for i, row in enumerate(block.rows):
                    texts[row].extend(block.ids[i, :block.counts[i]].tolist())
        return [prime + self.checkpoint.vocab.decode(ids) for ids in texts]

    def score(self, text: str, skip_unknown: bool = False) -> Score:
        """How well the model predicts text (see Score). Characters the model does not
        know are an UnknownCharactersError naming them, or dropped with skip_unknown."""
        ids = self.score_input(text, skip_unknown)
        with self._lock:
            nats, count = score_ids(self.network, ids)
        return Score(**perplexity_report(nats, count))

    def score_input(self, text: str, skip_unknown: bool = False):
        """The ids score() runs on (an int array of at least 2), or the error it raises."""
        vocab = self.checkpoint.vocab
        missing = vocab.missing(text)
        if missing and not skip_unknown:
            raise UnknownCharactersError(f"the text has characters not in the model's vocabulary: "
                                         f"{describe_chars(missing)}", missing)
        ids = vocab.encode("".join(c for c in text if c not in set(missing)))
        if ids.size < 2:
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
