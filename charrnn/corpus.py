"""A run's training text, as the training loop sees it: batches for each step, a
validation score, and what a checkpoint keeps of the split. Streams (one long text
read by B streams, the state carried from batch to batch) or lines (line mode)."""

from __future__ import annotations

import numpy as np

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data import Batches, load_ids, split_train_val
from charrnn.errors import CharrnnError, named
from charrnn.evaluate import line_losses, score_ids
from charrnn.lines import END, LineBatches, check_lengths, encode_lines, line_hashes, read_lines, split_lines
from charrnn.network import Network
from charrnn.vocab import Vocab


class StreamCorpus:
    """torch-rnn's layout: the first (1 - val_frac) of the text, read by batch_size
    streams seq_len characters at a time, each stream's state carried from one batch
    to the next; validation scores the last val_frac, batch_size streams side by side."""

    carries_state = True
    hashes = None  # nothing of the split to keep: it is where the text is cut

    def __init__(self, path, vocab: Vocab, tcfg: TrainConfig):
        self.ids = load_ids(path, vocab)
        self.train_ids, self.val_ids = split_train_val(self.ids, tcfg.val_frac)
        self.tcfg = tcfg
        try:
            self.batches = Batches(self.train_ids, tcfg.batch_size, tcfg.seq_len)
        except CharrnnError as e:
            held_out = (f" ({named('val_frac', format(tcfg.val_frac, 'g'))} holds out the last {len(self.val_ids):,} "
                        f"of its {len(self.ids):,} characters for validation)") if len(self.val_ids) else ""
            raise CharrnnError(f"{path}: {e.message}{held_out}") from None
        self.steps_per_epoch = self.batches.steps_per_epoch

    def batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batches.batch(step % self.steps_per_epoch)

    def validate(self, net: Network) -> float | None:
        """Mean loss (nats/char) over the whole validation split, state carried."""
        if self.val_ids.size < 2:
            return None
        total, count = score_ids(net, self.val_ids, streams=self.tcfg.batch_size, chunk=self.tcfg.seq_len)
        return total / count

    @property
    def val_size(self) -> int:
        return len(self.val_ids)

    def describe(self) -> str:
        return (f"{len(self.train_ids):,} training and {len(self.val_ids):,} validation characters, "
                f"{self.steps_per_epoch} steps per epoch of {self.tcfg.batch_size}x{self.tcfg.seq_len}")


class LineCorpus:
    """Line mode (see lines.py): each non-empty line a sample, batch_size at a time;
    validation scores every validation line from a zero state."""

    carries_state = False

    def __init__(self, path, vocab: Vocab, tcfg: TrainConfig, val_hashes: np.ndarray | None = None):
        lines = read_lines(path)
        train, val = split_lines(lines, tcfg.val_frac, tcfg.seed, val_hashes)
        check_lengths(lines, tcfg.seq_len, path)
        self.end = vocab.chars.index(END)
        self.train_lines, self.val_lines = encode_lines(train, vocab, path), encode_lines(val, vocab, path)
        self.hashes = (line_hashes(train), line_hashes(val))
        self.tcfg = tcfg
        self.batches = LineBatches(self.train_lines, tcfg.batch_size, self.end, tcfg.seed)
        self.steps_per_epoch = self.batches.steps_per_epoch

    def batch_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batches.batch_at(step)

    def validate(self, net: Network) -> float | None:
        """Mean loss (nats/char, each line's end counted as a character) over every
        validation line."""
        if not self.val_lines:
            return None
        nats = line_losses(net, self.val_lines, self.end, self.tcfg.batch_size)
        return float(nats.sum()) / sum(len(line) + 1 for line in self.val_lines)

    @property
    def val_size(self) -> int:
        return sum(len(line) + 1 for line in self.val_lines)

    def describe(self) -> str:
        return (f"{len(self.train_lines):,} training and {len(self.val_lines):,} validation lines, "
                f"{self.steps_per_epoch} steps per epoch of {self.tcfg.batch_size} lines")


def load_corpus(path, vocab: Vocab, cfg: ModelConfig, tcfg: TrainConfig, val_hashes=None):
    """The run's corpus in its mode; a line-mode run resumed keeps its validation lines."""
    if cfg.lines:
        return LineCorpus(path, vocab, tcfg, val_hashes)
    return StreamCorpus(path, vocab, tcfg)
