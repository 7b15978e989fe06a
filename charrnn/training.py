"""The training loop: set up a run (new or resumed), then step, evaluate and save
until the budget is spent, Ctrl-C or SIGTERM."""

from __future__ import annotations

import math
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

from charrnn.checkpoint import Checkpoint, TrainingState
from charrnn.config import ModelConfig, TrainConfig, describe_options
from charrnn.corpus import load_corpus
from charrnn.data import check_text_file, file_sha256
from charrnn.errors import CharrnnError, UnknownCharactersError, named
from charrnn import isa, speed
from charrnn.interrupts import handled
from charrnn.model import RecurrentState, memory_for, step_key
from charrnn.network import Network
from charrnn.optim import WeightAverage, global_norm
from charrnn.rundir import RunDirectory, overfitting, resume_path
from charrnn.runstart import Start, fine_tuned_run, new_run, resumed_run
from charrnn.schedule import Budget, next_eval_time
from charrnn.vocab import describe_chars


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
        resume = None if resume is None else resume_path(resume)
        self.run_dir.check(resume, overwrite)
        if resume is not None:
            start = resumed_run(resume, given_model, given_train, vocab_path, self.run_dir, overwrite)
        elif given_train.get("init") is not None:
            start = fine_tuned_run(given_train["init"], self.corpus, given_model, given_train, vocab_path)
        else:
            start = new_run(self.corpus, given_model, given_train, vocab_path, self.log)
        self.cfg, self.tcfg, self.vocab, self.params = start.cfg, start.tcfg, start.vocab, start.params
        self.optimizer, self.state, self.carry = start.optimizer, start.state, start.carry
        if self.tcfg.precision == "bf16":
            isa.enable_bf16()  # refused here, before the run directory is touched
        self.data = self._load_corpus(start, resume, vocab_path)
        self.budget = Budget(self.tcfg, self.data.steps_per_epoch)
        self.state.steps_per_epoch = self.data.steps_per_epoch
        self.fingerprint = file_sha256(self.corpus)
        self.run_dir.create()
        for note in (start.note, self._corpus_note(start.fingerprint)):
            if note:
                self.log(note)
        self.net = Network(self.cfg, self.params, self.tcfg.precision)
        with memory_for(self.cfg):
            self.grads = self.params.zeros_like()
            self.average = WeightAverage(self.params, self.tcfg.ema, start.average) if self.tcfg.ema else None
        # What is validated and saved under the model's names: the weights, or their average.
        self.eval_params = self.average.avg if self.average else self.params
        self.eval_net = Network(self.cfg, self.eval_params) if self.average else self.net
        self.metrics = self.run_dir.metrics(self.step) if self.resumed else []
        self.interrupted = False
        self.unvalidated = False  # the last save was a stop signal's, of a step not validated
        self.stop_signal = None  # the signal that interrupted the run: SIGINT (Ctrl-C) or SIGTERM
        self.noted_eval_cost = False  # the slow-validation note is said once a run

    def _load_corpus(self, start: Start, resume, vocab_path):
        try:
            return load_corpus(self.corpus, self.vocab, self.cfg, self.tcfg, start.val_hashes)
        except UnknownCharactersError as e:
            if resume is not None:
                raise CharrnnError(
                    f"{self.corpus} has characters that are not in the vocabulary of {resume}: "
                    f"{describe_chars(e.chars)}; a resumed model cannot learn new characters "
                    f"(fine-tuning with {named('init')} can)") from None
            raise CharrnnError(
                f"{self.corpus} has characters that are not in {named('vocab', vocab_path)}: "
                f"{describe_chars(e.chars)}; rebuild it with charrnn vocab") from None

    def _corpus_note(self, trained_on) -> str | None:
        if trained_on is not None and trained_on != self.fingerprint:
            return (f"note: {self.corpus} differs from the corpus the checkpoint was trained on; "
                    "training continues on the new text")
        return None

    @property
    def step(self) -> int:
        return self.state.step

    def lr(self, elapsed: float) -> float:
        """The learning rate of the next step."""
        return self.budget.lr(self.step, elapsed)

    # ----- one step, one evaluation ---------------------------------------------

    def train_step(self, state: RecurrentState, elapsed: float):
        """One optimiser step on the next batch. Returns (loss, state after the batch)."""
        if not self.data.carries_state or self.step % self.data.steps_per_epoch == 0:
            # a line starts from zero; a new epoch starts the streams again from the beginning
            state = RecurrentState.zeros(self.cfg, self.tcfg.batch_size)
        x, y = self.data.batch_at(self.step)
        self.batch_chars = int((y >= 0).sum())
        self.grads.flat[:] = 0.0
        loss, new_state = self.net.loss_and_grad(x, y, state, self.grads, step_key(self.tcfg.seed, self.step))
        norm = global_norm(self.grads)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise self.diverged(self.step + 1, "training loss" if not math.isfinite(loss) else "gradient norm")
        self.optimizer.step(self.grads, self.lr(elapsed), self.step + 1, norm, self.tcfg.grad_clip,
                            self.tcfg.weight_decay)
        if self.average:
            self.average.update(self.step + 1)
        return loss, new_state

    def diverged(self, step: int, what: str) -> CharrnnError:
        return CharrnnError(
            f"training diverged at step {step}: the {what} is not finite; try a lower {named('lr')} "
            f"(this run used {self.tcfg.lr:g}); the checkpoints already in {self.out_dir} are untouched")

    def validate(self) -> float | None:
        """Mean loss (nats/char) over the whole validation split."""
        return self.data.validate(self.eval_net)

    def checkpoint(self, carry: RecurrentState | None) -> Checkpoint:
        state = TrainingState(**vars(self.state))
        if self.tcfg.max_time is None:
            # Wall-clock time differs from run to run; a step-budgeted run leaves it out
            # so that resuming reproduces the uninterrupted run's checkpoint bit for bit.
            state.elapsed = None
        return Checkpoint(self.cfg, self.vocab, self.eval_params, self.optimizer.moments, state, self.tcfg.to_dict(),
                          carry if self.data.carries_state else None, lines=self.data.hashes,
                          raw=self.params if self.average else None)

    def save(self, carry, improved: bool) -> None:
        self.state.corpus_sha256 = self.fingerprint
        self.run_dir.save(self.metrics, self.checkpoint(carry), improved)

    def record_evaluation(self, carry, train_loss, elapsed, chars_per_sec) -> float | None:
        """Score the validation split, log it, and write checkpoints. A non-finite
        validation loss or weight stops training before anything is written."""
        val = self.validate()
        if val is not None and not math.isfinite(val):
            raise self.diverged(self.step, "validation loss")
        if not (np.isfinite(self.params.flat).all() and np.isfinite(self.eval_params.flat).all()):
            raise self.diverged(self.step, "model's weights")
        best = self.state.best_val_loss
        # A run resumed after a kill between the writes of best.safetensors and
        # last.safetensors evaluates that best step again, to the same loss: it is the
        # best still, as it was for the run that was killed.
        replayed = self.step == self.state.best_step and val == best
        improved = val is None or best is None or val < best or replayed
        if improved and val is not None:  # no validation split: best is the newest
            self.state.best_val_loss, self.state.best_step = val, self.step
        self.state.since_best = 0 if improved else (self.state.since_best or 0) + 1
        self.state.val_loss = val
        if self.state.chosen and self.data.carries_state and chars_per_sec > 0:
            speed.remember(self.cfg, self.tcfg.batch_size, self.tcfg.seq_len, chars_per_sec,
                           self.tcfg.precision)  # for the next choice
        self.metrics.append({"step": self.step, "epoch": round(self.step / self.data.steps_per_epoch, 4),
                             "train_loss": train_loss, "val_loss": val,
                             "val_bits_per_char": None if val is None else val / math.log(2),
                             "lr": self.lr(elapsed), "elapsed": round(elapsed, 3),
                             "chars_per_sec": round(chars_per_sec, 1)})
        self.save(carry, improved)
        shown = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        rising = overfitting(self.metrics)
        self.log(f"step {self.step}: train loss {shown(train_loss)}, val loss {shown(val)}"
                 + (" (best)" if improved and val is not None else "") + (f"; {rising}" if rising else ""))
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
        spent = self._spent(self.state.elapsed)
        if self.resumed and spent:
            larger = (named("patience") if self.budget.patience_reached(self.state.since_best) else
                      f"{named('max_steps')}, {named('max_epochs')} or {named('max_time')}")
            raise CharrnnError(f"nothing to do: the checkpoint is at step {self.step}, which already meets "
                               f"{spent}; give a larger {larger}")
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
            while not self._spent(time.perf_counter() - start) and not self.interrupted:
                t0 = time.perf_counter()
                loss, state = self.train_step(state, t0 - start)
                self.state.step += 1
                timed_seconds += time.perf_counter() - t0
                timed_chars += self.batch_chars
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
                # A stop signal in the step that spent the budget: the run is complete,
                # and ends as one does (nothing would be left to resume).
                if not self.interrupted or self._spent(self.state.elapsed):
                    rate = timed_chars / timed_seconds if timed_seconds else 0.0
                    self.record_evaluation(state, float(np.mean(losses)) if losses else None, self.state.elapsed,
                                           rate)
                elif self.step != self.start_step:  # Ctrl-C or SIGTERM: last.safetensors only, not validated
                    self.state.val_loss = None
                    self.save(state, improved=False)
                    self.unvalidated = True
        finally:
            bar.close()
        return self.summary()

    def _spent(self, elapsed: float) -> str | None:
        return self.budget.reached(self.step, elapsed, self.state.since_best)

    def _note_evaluation_cost(self, seconds: float, train_seconds: float) -> None:
        """Say once when validation takes a large share of the time (a big corpus)."""
        if seconds > 5 and seconds > 0.2 * train_seconds and not self.noted_eval_cost:
            self.noted_eval_cost = True
            self.log(f"note: validating {self.data.val_size:,} characters took {seconds:.0f}s, against "
                     f"{train_seconds:.0f}s of training since the last evaluation; a larger {named('eval_every')} "
                     f"or a smaller {named('val_frac')} leaves more of the budget to training")

    def _postfix(self, losses, rate) -> str:
        val = self.state.val_loss
        rising = " (overfitting)" if overfitting(self.metrics) else ""
        return (f"loss {np.mean(losses[-50:]):.3f}, val {'-' if val is None else f'{val:.3f}'}{rising}, "
                f"{rate / 1000:.1f}k chars/s")

    def describe(self) -> str:
        c = self.cfg
        return (f"{c.cell} {c.layers}x{c.hidden}, embedding {c.embed}, {describe_options(c.to_dict())}, "
                f"{self.params.flat.size:,} parameters, vocabulary {len(self.vocab)}; "
                f"{self.data.describe()}; starting at step {self.step}")

    def summary(self) -> dict:
        """What run() did; "trained" is whether it took any step (so wrote last.safetensors)."""
        return {"step": self.step, "val_loss": self.state.val_loss, "best_val_loss": self.state.best_val_loss,
                "best_step": self.state.best_step, "elapsed": self.state.elapsed, "interrupted": self.interrupted,
                "signal": self.stop_signal, "trained": self.step != self.start_step, "validated": not self.unvalidated,
                "stopped_by": self._spent(self.state.elapsed), "overfitting": overfitting(self.metrics),
                "patience_stop": self.budget.patience_reached(self.state.since_best),
                "last": str(self.run_dir.file("last.safetensors")), "best": str(self.run_dir.file("best.safetensors"))}

