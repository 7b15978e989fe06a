"""The training loop: set up a run (new or resumed), then step, evaluate and save
until the budget is spent, Ctrl-C or SIGTERM."""

from __future__ import annotations

import math
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

from charrnn.checkpoint import Checkpoint, TrainingState, load_checkpoint
from charrnn.config import ModelConfig, TrainConfig, new_run_settings, resumed_run_settings
from charrnn.data import Batches, check_text_file, file_sha256, load_ids, scan_vocab, split_train_val
from charrnn.errors import CharrnnError, named
from charrnn.evaluate import score_ids
from charrnn.interrupts import handled
from charrnn.model import Parameters, RecurrentState, init_params, memory_for, step_key
from charrnn.network import Network
from charrnn.optim import Adam, global_norm
from charrnn.rundir import RunDirectory
from charrnn.schedule import Budget, next_eval_time
from charrnn.vocab import UnknownCharactersError, Vocab, describe_chars


class Trainer:
    """One training run: set up from settings or a checkpoint, then run() to the budget.

    model_settings and train_settings hold the settings the user gave, by name (None
    for one not given); the others take their defaults, or, resuming, the
    checkpoint's. Every input is checked before anything is written."""

    def __init__(self, corpus, out_dir, model_settings: dict, train_settings: dict,
                 vocab_path=None, resume=None, overwrite: bool = False, progress: bool = True):
        given_model = ModelConfig.check_values({k: v for k, v in model_settings.items() if v is not None})
        given_train = TrainConfig.check_values({k: v for k, v in train_settings.items() if v is not None})
        self.corpus = check_text_file(corpus)
        self.run_dir = RunDirectory(out_dir)
        self.out_dir = self.run_dir.path
        self.progress, self.resumed = progress, resume is not None
        self.run_dir.check(resume, overwrite)
        if resume is not None:
            self._setup_resume(resume, given_model, given_train, vocab_path, overwrite)
        else:
            self._setup_fresh(given_model, given_train, vocab_path)
        self.ids = self._load_corpus(resume, vocab_path)
        self.train_ids, self.val_ids = split_train_val(self.ids, self.tcfg.val_frac)
        self.batches = self._batches()
        self.budget = Budget(self.tcfg, self.batches.steps_per_epoch)
        self.state.steps_per_epoch = self.batches.steps_per_epoch
        self.fingerprint = file_sha256(self.corpus)
        self.run_dir.create()
        if self.resumed_fingerprint is not None and self.resumed_fingerprint != self.fingerprint:
            self.log(f"note: {self.corpus} differs from the corpus the checkpoint was trained on; "
                     "training continues on the new text")
        self.net = Network(self.cfg, self.params)
        with memory_for(self.cfg):
            self.grads = self.params.zeros_like()
        self.metrics = self.run_dir.metrics(self.step) if self.resumed else []
        self.interrupted = False
        self.stop_signal = None  # the signal that interrupted the run: SIGINT (Ctrl-C) or SIGTERM
        self.noted_eval_cost = False  # the slow-validation note is said once a run

    def _setup_fresh(self, given_model, given_train, vocab_path):
        self.vocab = Vocab.load(vocab_path) if vocab_path is not None else scan_vocab([self.corpus])
        self.cfg, self.tcfg = new_run_settings(given_model, given_train, len(self.vocab))
        with memory_for(self.cfg):
            self.params = Parameters(self.cfg, np.float32)
            self.optimizer = Adam(self.params)
        init_params(self.params, np.random.default_rng(self.tcfg.seed), forget_bias=self.tcfg.forget_bias)
        self.state = TrainingState(step=0, elapsed=0.0)
        self.carry = self.resumed_fingerprint = None

    def _setup_resume(self, resume, given_model, given_train, vocab_path, overwrite):
        ckpt = load_checkpoint(resume)
        if ckpt.optimizer is None or ckpt.state.step is None:
            raise CharrnnError(f"{resume} has no optimiser state, so training cannot resume from it")
        if vocab_path is not None and Vocab.load(vocab_path) != ckpt.vocab:
            raise CharrnnError(f"{named('vocab', vocab_path)} differs from the vocabulary of {resume}")
        try:
            saved = TrainConfig.from_dict(ckpt.train)
        except CharrnnError as e:
            raise CharrnnError(f"{resume}: bad training settings: {e}") from None
        self.tcfg = resumed_run_settings(saved, ckpt.config, given_model, given_train)
        self.vocab, self.cfg, self.params, self.carry = ckpt.vocab, ckpt.config, ckpt.params, ckpt.carry
        self.optimizer = Adam(self.params, ckpt.optimizer)
        self.state = ckpt.state
        self.state.elapsed = self.state.elapsed or 0.0
        self.resumed_fingerprint = self.state.corpus_sha256
        if not overwrite:
            self.run_dir.check_last(resume, self.step)
            self.run_dir.adopt_best(self.state)

    def _load_corpus(self, resume, vocab_path) -> np.ndarray:
        try:
            return load_ids(self.corpus, self.vocab)
        except UnknownCharactersError as e:
            if resume is not None:
                raise CharrnnError(
                    f"{self.corpus} has characters that are not in the vocabulary of {resume}: "
                    f"{describe_chars(e.chars)}; a resumed model cannot learn new characters") from None
            raise CharrnnError(
                f"{self.corpus} has characters that are not in {named('vocab', vocab_path)}: "
                f"{describe_chars(e.chars)}; rebuild it with charrnn vocab") from None

    def _batches(self) -> Batches:
        t = self.tcfg
        try:
            return Batches(self.train_ids, t.batch_size, t.seq_len)
        except CharrnnError as e:
            held_out = (f" ({named('val_frac', format(t.val_frac, 'g'))} holds out the last {len(self.val_ids):,} "
                        f"of its {len(self.ids):,} characters for validation)") if len(self.val_ids) else ""
            raise CharrnnError(f"{self.corpus}: {e.message}{held_out}") from None

    @property
    def step(self) -> int:
        return self.state.step

    def lr(self, elapsed: float) -> float:
        """The learning rate of the next step."""
        return self.budget.lr(self.step, elapsed)

    # ----- one step, one evaluation ---------------------------------------------

    def train_step(self, state: RecurrentState, elapsed: float):
        """One optimiser step on the next batch. Returns (loss, state after the batch)."""
        k = self.step % self.batches.steps_per_epoch
        if k == 0:  # a new epoch starts the streams again from the beginning
            state = RecurrentState.zeros(self.cfg, self.tcfg.batch_size)
        x, y = self.batches.batch(k)
        self.grads.flat[:] = 0.0
        loss, new_state = self.net.loss_and_grad(x, y, state, self.grads, step_key(self.tcfg.seed, self.step))
        norm = global_norm(self.grads)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise self.diverged(self.step + 1, "training loss" if not math.isfinite(loss) else "gradient norm")
        self.optimizer.step(self.grads, self.lr(elapsed), self.step + 1, norm, self.tcfg.grad_clip)
        return loss, new_state

    def diverged(self, step: int, what: str) -> CharrnnError:
        return CharrnnError(
            f"training diverged at step {step}: the {what} is not finite; try a lower {named('lr')} "
            f"(this run used {self.tcfg.lr:g}); the checkpoints already in {self.out_dir} are untouched")

    def validate(self) -> float | None:
        """Mean loss (nats/char) over the whole validation split, state carried."""
        if self.val_ids.size < 2:
            return None
        total, count = score_ids(self.net, self.val_ids, streams=self.tcfg.batch_size, chunk=self.tcfg.seq_len)
        return total / count

    def checkpoint(self, carry: RecurrentState | None) -> Checkpoint:
        state = TrainingState(**vars(self.state))
        if self.tcfg.max_time is None:
            # Wall-clock time differs from run to run; a step-budgeted run leaves it out
            # so that resuming reproduces the uninterrupted run's checkpoint bit for bit.
            state.elapsed = None
        return Checkpoint(self.cfg, self.vocab, self.params, self.optimizer.moments, state, self.tcfg.to_dict(),
                          carry)

    def save(self, carry, improved: bool) -> None:
        self.state.corpus_sha256 = self.fingerprint
        self.run_dir.save(self.metrics, self.checkpoint(carry), improved)

    def record_evaluation(self, carry, train_loss, elapsed, chars_per_sec) -> float | None:
        """Score the validation split, log it, and write checkpoints. A non-finite
        validation loss or weight stops training before anything is written."""
        val = self.validate()
        if val is not None and not math.isfinite(val):
            raise self.diverged(self.step, "validation loss")
        if not np.isfinite(self.params.flat).all():
            raise self.diverged(self.step, "model's weights")
        improved = val is None or self.state.best_val_loss is None or val < self.state.best_val_loss
        if improved and val is not None:  # no validation split: best is the newest
            self.state.best_val_loss, self.state.best_step = val, self.step
        self.state.val_loss = val
        self.metrics.append({"step": self.step, "epoch": round(self.step / self.batches.steps_per_epoch, 4),
                             "train_loss": train_loss, "val_loss": val,
                             "val_bits_per_char": None if val is None else val / math.log(2),
                             "lr": self.lr(elapsed), "elapsed": round(elapsed, 3),
                             "chars_per_sec": round(chars_per_sec, 1)})
        self.save(carry, improved)
        shown = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        self.log(f"step {self.step}: train loss {shown(train_loss)}, val loss {shown(val)}"
                 + (" (best)" if improved and val is not None else ""))
        return val

    def log(self, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    # ----- the loop -------------------------------------------------------------

    # Ctrl-C, and SIGTERM (what kill, timeout and job schedulers send), end the run after
    # the current step with last.safetensors saved; a second one stops at once.
    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def _on_stop_signal(self, signum, frame):
        first = not self.interrupted
        self.interrupted = True
        self.stop_signal = signum  # the last one is what the exit status reports
        if not first:
            raise KeyboardInterrupt

    def run(self) -> dict:
        """Train until the budget is spent, Ctrl-C or SIGTERM. Returns a summary."""
        if not self.tcfg.has_budget:
            raise CharrnnError(f"no training budget: give {named('max_steps')}, {named('max_epochs')} or "
                               f"{named('max_time')}")
        spent = self.budget.reached(self.step, self.state.elapsed)
        if self.resumed and spent:
            raise CharrnnError(f"nothing to do: the checkpoint is at step {self.step}, which already meets "
                               f"{spent}; give a larger {named('max_steps')}, {named('max_epochs')} or "
                               f"{named('max_time')}")
        with self.run_dir.lock(), handled(self.STOP_SIGNALS, self._on_stop_signal):
            return self._loop()

    def _loop(self) -> dict:
        t = self.tcfg
        self.log(self.describe())
        state = self.carry if self.carry is not None else RecurrentState.zeros(self.cfg, t.batch_size)
        if state.h.shape[1] != t.batch_size:
            state = RecurrentState.zeros(self.cfg, t.batch_size)
        start = time.perf_counter() - self.state.elapsed
        # disable=None: no bar when stderr is not a terminal, where its redraws would
        # fill a log file with one line per refresh.
        bar = tqdm(total=t.max_steps, initial=self.step, file=sys.stderr, unit="step",
                   disable=None if self.progress else True, dynamic_ncols=True, leave=False)
        losses, timed_chars, timed_seconds = [], 0, 0.0
        self.start_step = self.step
        saved_step = self.step if self.resumed else None  # the step last.safetensors holds
        next_eval = next_eval_time(self.state.elapsed, t.eval_seconds)
        try:
            while not self.budget.reached(self.step, time.perf_counter() - start) and not self.interrupted:
                t0 = time.perf_counter()
                loss, state = self.train_step(state, t0 - start)
                self.state.step += 1
                timed_seconds += time.perf_counter() - t0
                timed_chars += self.batches.chars_per_batch
                losses.append(loss)
                self.state.elapsed = time.perf_counter() - start
                rate = timed_chars / timed_seconds
                bar.update(1)
                bar.set_postfix_str(self._postfix(losses, rate), refresh=False)
                if (t.eval_steps is not None and self.step % t.eval_steps == 0) or self.state.elapsed >= next_eval:
                    t_eval = time.perf_counter()
                    self.record_evaluation(state, float(np.mean(losses)), self.state.elapsed, rate)
                    self._note_evaluation_cost(time.perf_counter() - t_eval, timed_seconds)
                    saved_step, losses, timed_chars, timed_seconds = self.step, [], 0, 0.0
                    next_eval = next_eval_time(time.perf_counter() - start, t.eval_seconds)
            if saved_step != self.step:
                if not self.interrupted:
                    rate = timed_chars / timed_seconds if timed_seconds else 0.0
                    self.record_evaluation(state, float(np.mean(losses)) if losses else None, self.state.elapsed,
                                           rate)
                elif self.step != self.start_step:  # Ctrl-C or SIGTERM: last.safetensors only, not validated
                    self.state.val_loss = None
                    self.save(state, improved=False)
        finally:
            bar.close()
        return self.summary()

    def _note_evaluation_cost(self, seconds: float, train_seconds: float) -> None:
        """Say once when validation takes a large share of the time (a big corpus)."""
        if seconds > 5 and seconds > 0.2 * train_seconds and not self.noted_eval_cost:
            self.noted_eval_cost = True
            self.log(f"note: validating {len(self.val_ids):,} characters took {seconds:.0f}s, against "
                     f"{train_seconds:.0f}s of training since the last evaluation; a larger {named('eval_every')} "
                     f"or a smaller {named('val_frac')} leaves more of the budget to training")

    def _postfix(self, losses, rate) -> str:
        val = self.state.val_loss
        return (f"loss {np.mean(losses[-50:]):.3f}, val {'-' if val is None else f'{val:.3f}'}, "
                f"{rate / 1000:.1f}k chars/s")

    def describe(self) -> str:
        c, t = self.cfg, self.tcfg
        return (f"{c.cell} {c.layers}x{c.hidden}, embedding {c.embed}, dropout {c.dropout:g}, "
                f"{self.params.flat.size:,} parameters, vocabulary {len(self.vocab)}; "
                f"{len(self.train_ids):,} training and {len(self.val_ids):,} validation characters, "
                f"{self.batches.steps_per_epoch} steps per epoch of {t.batch_size}x{t.seq_len}; "
                f"starting at step {self.step}")

    def summary(self) -> dict:
        """What run() did; "trained" is whether it took any step (so wrote last.safetensors)."""
        return {"step": self.step, "val_loss": self.state.val_loss, "best_val_loss": self.state.best_val_loss,
                "best_step": self.state.best_step, "elapsed": self.state.elapsed, "interrupted": self.interrupted,
                "signal": self.stop_signal, "trained": self.step != self.start_step,
                "last": str(self.run_dir.file("last.safetensors")), "best": str(self.run_dir.file("best.safetensors"))}

