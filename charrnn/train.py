"""The training loop: batches, Adam, clipping, evaluation, checkpoints and progress."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from charrnn.checkpoint import Checkpoint, load_checkpoint, read_metadata, save_checkpoint
from charrnn.data import Batches, check_text_file, load_ids, scan_vocab, split_train_val
from charrnn.errors import CharrnnError
from charrnn.evaluate import score_ids
from charrnn.fileio import atomic_write_text
from charrnn.model import ModelConfig, Network, ParamBuffer, RecurrentState, init_params
from charrnn.vocab import Vocab

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class TrainConfig:
    """How to train; saved in every checkpoint."""

    batch_size: int = 50
    seq_len: int = 50
    lr: float = 2e-3
    grad_clip: float = 5.0
    val_frac: float = 0.1
    eval_every: int = 500
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None  # seconds of training, counted across resumes
    seed: int = 0

    def __post_init__(self):
        positive_ints = ("batch_size", "seq_len", "eval_every")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise CharrnnError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.max_steps is not None and self.max_steps < 0:
            raise CharrnnError(f"--max-steps must be >= 0, got {self.max_steps}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise CharrnnError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        for name in ("max_epochs", "max_time"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise CharrnnError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if not (math.isfinite(self.val_frac) and 0.0 <= self.val_frac < 1.0):
            raise CharrnnError(f"--val-frac must be in [0, 1), got {self.val_frac}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise CharrnnError(f"--seed must be a non-negative integer, got {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Settings that fix which character every step sees: a resumed run must keep them.
DATA_SETTINGS = ("batch_size", "seq_len", "val_frac", "seed")


def step_key(seed: int, step: int) -> int:
    """The dropout key of one optimiser step: a function of (seed, step) alone, so a
    resumed run draws exactly the masks the uninterrupted run would have drawn."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0])


def corpus_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class Trainer:
    """One training run: set up from flags or a checkpoint, then run() to the budget."""

    def __init__(self, corpus, out_dir, model_flags: dict, train_flags: dict,
                 vocab_path=None, resume=None, overwrite: bool = False, progress: bool = True):
        self.corpus = check_text_file(corpus)
        self.out_dir = Path(out_dir)
        self.progress = progress
        self._prepare_out_dir(resume, overwrite)
        given_model = {k: v for k, v in model_flags.items() if v is not None}
        given_train = {k: v for k, v in train_flags.items() if v is not None}
        if resume is not None:
            self._setup_resume(resume, given_model, given_train, vocab_path)
        else:
            self._setup_fresh(given_model, given_train, vocab_path)
        self.ids = load_ids(self.corpus, self.vocab)
        self.train_ids, self.val_ids = split_train_val(self.ids, self.tcfg.val_frac)
        self.batches = Batches(self.train_ids, self.tcfg.batch_size, self.tcfg.seq_len)
        self.fingerprint = corpus_fingerprint(self.corpus)
        self._check_resumed_corpus()
        self.net = Network(self.cfg, self.params)
        self.grads = self.params.zeros_like()
        self.metrics = self._load_metrics()
        self.interrupted = False

    # ----- set-up -------------------------------------------------------------

    def _prepare_out_dir(self, resume, overwrite):
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise CharrnnError(f"--out {out} is a file, not a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CharrnnError(f"cannot create --out {out}: {e.strerror or e}") from None
        probe = out / ".charrnn-write-test"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CharrnnError(f"--out {out} is not writable: {e.strerror or e}") from None
        existing = [name for name in ("last.safetensors", "best.safetensors") if (out / name).exists()]
        if existing and resume is None and not overwrite:
            raise CharrnnError(
                f"{out} already holds a run ({', '.join(existing)}); continue it with "
                f"--resume {out / 'last.safetensors'}, or pass --overwrite to start over")

    def _setup_fresh(self, given_model, given_train, vocab_path):
        self.tcfg = TrainConfig(**given_train)
        if vocab_path is not None:
            self.vocab = Vocab.load(vocab_path)
        else:
            self.vocab = scan_vocab([self.corpus])
        self.cfg = ModelConfig(vocab_size=len(self.vocab), **given_model)
        self.params = ParamBuffer(self.cfg, np.float32)
        init_params(self.params, np.random.default_rng(self.tcfg.seed))
        self.moments = {slot: self.params.zeros_like() for slot in ("exp_avg", "exp_avg_sq")}
        self.state = {"step": 0, "elapsed": 0.0, "best_val_loss": None, "best_step": None,
                      "val_loss": None}
        self.carry = None
        self.resumed_fingerprint = None

    def _setup_resume(self, resume, given_model, given_train, vocab_path):
        ckpt = load_checkpoint(resume)
        if ckpt.optimizer is None or "step" not in ckpt.state:
            raise CharrnnError(f"{resume} has no optimiser state, so training cannot resume from it")
        if vocab_path is not None and Vocab.load(vocab_path) != ckpt.vocab:
            raise CharrnnError(f"--vocab {vocab_path} differs from the vocabulary of {resume}")
        for name, value in given_model.items():
            if getattr(ckpt.config, name) != value:
                raise CharrnnError(f"--{name} {value} conflicts with the checkpoint's "
                                   f"{name} = {getattr(ckpt.config, name)}; drop the flag to resume")
        saved_train = TrainConfig.from_dict(ckpt.train)
        for name in DATA_SETTINGS:
            if name in given_train and given_train[name] != getattr(saved_train, name):
                raise CharrnnError(
                    f"--{name.replace('_', '-')} {given_train[name]} conflicts with the checkpoint's "
                    f"{getattr(saved_train, name)}; a resumed run keeps it so that it sees the same data")
        self.tcfg = replace(saved_train, **given_train)
        self.vocab, self.cfg, self.params = ckpt.vocab, ckpt.config, ckpt.params
        self.moments = ckpt.optimizer
        self.state = {"elapsed": 0.0, **ckpt.state}
        self.carry = ckpt.carry
        self.resumed_fingerprint = self.state.get("corpus_sha256")
        best_on_disk = self._best_on_disk()
        if best_on_disk is not None:
            mine = self.state.get("best_val_loss")
            if mine is None or best_on_disk < mine:
                self.state["best_val_loss"] = best_on_disk

    def _best_on_disk(self):
        best = self.out_dir / "best.safetensors"
        if not best.exists():
            return None
        try:
            loss = read_metadata(best)["state"].get("val_loss")
        except CharrnnError:
            return None
        return loss if isinstance(loss, (int, float)) and math.isfinite(loss) else None

    def _check_resumed_corpus(self):
        if self.resumed_fingerprint is not None and self.resumed_fingerprint != self.fingerprint:
            self.log(f"note: {self.corpus} differs from the corpus the checkpoint was trained on; "
                     "training continues on the new text")

    def _load_metrics(self) -> list[dict]:
        """Earlier evaluations of this run (when resuming into the same directory)."""
        path = self.out_dir / "metrics.jsonl"
        if self.state["step"] == 0 or not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= self.state["step"]:
                rows.append(row)
        return rows

    # ----- budget -------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.state["step"]

    def finished(self, elapsed: float) -> bool:
        t = self.tcfg
        if t.max_steps is not None and self.step >= t.max_steps:
            return True
        if t.max_epochs is not None and self.step >= t.max_epochs * self.batches.steps_per_epoch:
            return True
        return t.max_time is not None and elapsed >= t.max_time

    def lr(self, elapsed: float) -> float:
        return self.tcfg.lr

    # ----- one step -----------------------------------------------------------

    def train_step(self, state: RecurrentState, elapsed: float):
        """One optimiser step on the next batch. Returns (loss, state after the batch)."""
        from charrnn.kernels.optim import adam_update, scale_inplace, sum_squares

        k = self.step % self.batches.steps_per_epoch
        if k == 0:  # a new epoch starts the streams again from the beginning
            state = RecurrentState.zeros(self.cfg, self.tcfg.batch_size)
        x, y = self.batches.batch(k)
        self.grads.flat[:] = 0.0
        loss, new_state = self.net.loss_and_grad(x, y, state, self.grads, step_key(self.tcfg.seed, self.step))
        norm = math.sqrt(sum_squares(self.grads.flat))
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise CharrnnError(
                f"training diverged at step {self.step + 1}: the {what} is not finite; "
                f"try a lower --lr (this run used {self.tcfg.lr:g}); checkpoints on disk are untouched")
        if norm > self.tcfg.grad_clip:
            scale_inplace(self.grads.flat, self.tcfg.grad_clip / (norm + 1e-6))
        adam_update(self.params.flat, self.grads.flat, self.moments["exp_avg"].flat,
                    self.moments["exp_avg_sq"].flat, self.lr(elapsed), ADAM_BETAS[0], ADAM_BETAS[1],
                    ADAM_EPS, self.step + 1)
        return loss, new_state

    def validate(self) -> float | None:
        """Mean loss (nats/char) over the whole validation split, state carried."""
        if self.val_ids.size < 2:
            return None
        total, count = score_ids(self.net, self.val_ids, streams=self.tcfg.batch_size,
                                 chunk=self.tcfg.seq_len)
        return total / count

    # ----- checkpoints and logs -------------------------------------------------

    def checkpoint(self, carry: RecurrentState | None) -> Checkpoint:
        state = dict(self.state)
        if self.tcfg.max_time is None:
            # Wall-clock time differs from run to run; a step-budgeted run leaves it out
            # so that resuming reproduces the uninterrupted run's checkpoint bit for bit.
            del state["elapsed"]
        return Checkpoint(self.cfg, self.vocab, self.params, self.moments, state, self.tcfg.to_dict(), carry)

    def save(self, carry, improved: bool) -> None:
        ckpt = self.checkpoint(carry)
        save_checkpoint(self.out_dir / "last.safetensors", ckpt)
        if improved:
            save_checkpoint(self.out_dir / "best.safetensors", ckpt)
        rows = "".join(json.dumps(row) + "\n" for row in self.metrics)
        atomic_write_text(self.out_dir / "metrics.jsonl", rows)

    def log(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)

    def record_evaluation(self, carry, train_loss, elapsed, chars_per_sec) -> float | None:
        """Score the validation split, log it, and write checkpoints."""
        val = self.validate()
        improved = False
        if val is not None and math.isfinite(val):
            best = self.state.get("best_val_loss")
            improved = best is None or val < best
            if improved:
                self.state["best_val_loss"], self.state["best_step"] = val, self.step
        elif val is None:
            improved = True  # no validation split: best is the newest
        self.state["val_loss"] = val
        row = {"step": self.step, "epoch": round(self.step / self.batches.steps_per_epoch, 4),
               "train_loss": train_loss, "val_loss": val,
               "val_bits_per_char": None if val is None else val / math.log(2),
               "lr": self.lr(elapsed), "elapsed": round(elapsed, 3),
               "chars_per_sec": round(chars_per_sec, 1)}
        self.metrics.append(row)
        self.state["corpus_sha256"] = self.fingerprint
        self.save(carry, improved)
        shown = "n/a" if val is None else f"{val:.4f}"
        self.log(f"step {self.step}: train loss {train_loss:.4f}, val loss {shown}"
                 + (" (best)" if improved and val is not None else ""))
        return val

    # ----- the loop -------------------------------------------------------------

    def _on_sigint(self, signum, frame):
        if self.interrupted:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.interrupted = True

    def run(self) -> dict:
        """Train until the budget is spent or Ctrl-C. Returns a summary."""
        from tqdm import tqdm

        t = self.tcfg
        if t.max_steps is None and t.max_epochs is None and t.max_time is None:
            raise CharrnnError("no training budget: give --max-steps, --max-epochs or --max-time")
        self.log(self.describe())
        state = self.carry if self.carry is not None else RecurrentState.zeros(self.cfg, t.batch_size)
        if state.h.shape[1] != t.batch_size:
            state = RecurrentState.zeros(self.cfg, t.batch_size)
        previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: Ctrl-C cannot reach us anyway
            previous = None
        start = time.perf_counter() - self.state["elapsed"]
        bar = tqdm(total=t.max_steps, initial=self.step, file=sys.stderr, unit="step",
                   disable=not self.progress, dynamic_ncols=True, leave=False)
        losses, timed_chars, timed_seconds = [], 0, 0.0
        last_eval_step = self.step if self.metrics else None
        try:
            while not self.finished(time.perf_counter() - start) and not self.interrupted:
                t0 = time.perf_counter()
                loss, state = self.train_step(state, t0 - start)
                self.state["step"] += 1
                timed_seconds += time.perf_counter() - t0
                timed_chars += self.batches.chars_per_batch
                losses.append(loss)
                self.state["elapsed"] = time.perf_counter() - start
                rate = timed_chars / timed_seconds
                bar.update(1)
                bar.set_postfix_str(self._postfix(losses, rate), refresh=False)
                if self.step % t.eval_every == 0:
                    self.record_evaluation(state, float(np.mean(losses)), self.state["elapsed"], rate)
                    last_eval_step, losses, timed_chars, timed_seconds = self.step, [], 0, 0.0
            if last_eval_step != self.step:
                rate = timed_chars / timed_seconds if timed_seconds else 0.0
                train_loss = float(np.mean(losses)) if losses else float("nan")
                self.record_evaluation(state, train_loss, self.state["elapsed"], rate)
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.summary()

    def _postfix(self, losses, rate) -> str:
        val = self.state.get("val_loss")
        return (f"loss {np.mean(losses[-50:]):.3f}, val {'-' if val is None else f'{val:.3f}'}, "
                f"{rate / 1000:.1f}k chars/s")

    def describe(self) -> str:
        c, t = self.cfg, self.tcfg
        n_params = self.params.flat.size
        return (f"{c.cell} {c.layers}x{c.hidden}, embedding {c.embed}, dropout {c.dropout:g}, "
                f"{n_params:,} parameters, vocabulary {len(self.vocab)}; "
                f"{len(self.train_ids):,} training and {len(self.val_ids):,} validation characters, "
                f"{self.batches.steps_per_epoch} steps per epoch of {t.batch_size}x{t.seq_len}; "
                f"starting at step {self.step}")

    def summary(self) -> dict:
        return {"step": self.step, "val_loss": self.state.get("val_loss"),
                "best_val_loss": self.state.get("best_val_loss"), "best_step": self.state.get("best_step"),
                "elapsed": self.state["elapsed"], "interrupted": self.interrupted,
                "last": str(self.out_dir / "last.safetensors"), "best": str(self.out_dir / "best.safetensors")}
