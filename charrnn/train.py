"""The training loop: batches, Adam, clipping, evaluation, checkpoints and progress."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from charrnn.checkpoint import Checkpoint, load_checkpoint, read_metadata, save_checkpoint
from charrnn.data import Batches, check_text_file, load_ids, scan_vocab, split_train_val
from charrnn.errors import CharrnnError
from charrnn.evaluate import score_ids
from charrnn.fileio import atomic_write_text, locked_directory, remove_stale_temp_files
from charrnn.model import GATES, ModelConfig, Network, ParamBuffer, RecurrentState, init_params, parameter_shapes
from charrnn.vocab import UnknownCharactersError, Vocab, describe_chars

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _optional(rule):
    ok, what = rule
    return (lambda v: v is None or ok(v)), what


# flag -> (check, what the value must be). Checked here, before a value reaches
# ModelConfig or TrainConfig, so that every message names the flag as typed.
POSITIVE_INT = (lambda v: _is_int(v) and v >= 1, "a positive integer")
NON_NEGATIVE_INT = (lambda v: _is_int(v) and v >= 0, "a non-negative integer")
POSITIVE_NUMBER = (lambda v: _is_real(v) and v > 0, "a positive number")
FRACTION = (lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)")
SCHEDULES = ("cosine", "linear", "constant")


def eval_seconds(value) -> float | None:
    """The seconds of an --eval-every given as time ("60s"), None for a number of
    steps or anything else."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            seconds = float(value[:-1])
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds > 0 else None
    return None


MODEL_FLAGS = {"cell": (lambda v: v in GATES, f"one of {', '.join(GATES)}"),
               "layers": POSITIVE_INT, "hidden": POSITIVE_INT, "embed": POSITIVE_INT, "dropout": FRACTION}
TRAIN_FLAGS = {"batch_size": POSITIVE_INT, "seq_len": POSITIVE_INT, "lr": POSITIVE_NUMBER,
               "lr_schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
               "warmup_steps": NON_NEGATIVE_INT,
               "min_lr_frac": (lambda v: _is_real(v) and 0 <= v <= 1, "in [0, 1]"),
               "grad_clip": POSITIVE_NUMBER, "val_frac": FRACTION,
               "eval_every": (lambda v: (_is_int(v) and v >= 1) or eval_seconds(v) is not None,
                              "a positive integer (steps) or a duration such as 1m"),
               "max_steps": _optional(NON_NEGATIVE_INT), "max_epochs": _optional(POSITIVE_NUMBER),
               "max_time": _optional(POSITIVE_NUMBER), "seed": NON_NEGATIVE_INT,
               "forget_bias": (_is_real, "a finite number")}
# The budget: a resumed run given any of these replaces the saved budget with them.
BUDGET = ("max_steps", "max_epochs", "max_time")
# What a checkpoint written before the learning-rate schedule existed was trained
# with: resuming it keeps the constant rate.
LEGACY_TRAIN = {"lr_schedule": "constant", "warmup_steps": 0, "min_lr_frac": 0.0, "forget_bias": 0.0}


def lr_factor(schedule: str, progress: float, step: int, warmup_steps: int, min_lr_frac: float) -> float:
    """The fraction of --lr that step `step` (0-based) uses: a linear warm-up over
    the first warmup_steps steps, times the decay at `progress`, the fraction of the
    budget spent (0 to 1): cosine or linear from 1 down to min_lr_frac, or constant."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    p = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "linear":
        decay = 1.0 - p
    else:
        return warm
    return warm * (min_lr_frac + (1.0 - min_lr_frac) * decay)


def check_flags(values: dict, rules: dict) -> None:
    """A one-line CharrnnError naming the first flag whose value breaks its rule."""
    for name, value in values.items():
        ok, what = rules[name]
        if not ok(value):
            raise CharrnnError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train; saved in every checkpoint."""

    batch_size: int = 32
    seq_len: int = 50
    lr: float = 4e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_frac: float = 0.0
    grad_clip: float = 5.0
    val_frac: float = 0.1
    eval_every: int | str = "60s"  # steps, or seconds of training as "60s"
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None  # seconds of training, counted across resumes
    seed: int = 0
    forget_bias: float = 0.0  # added to the LSTM's forget-gate biases at initialisation

    def __post_init__(self):
        check_flags(asdict(self), TRAIN_FLAGS)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{**LEGACY_TRAIN, **{k: v for k, v in d.items() if k in known}})


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


RUN_FILES = ("last.safetensors", "best.safetensors", "metrics.jsonl")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (JSON objects with an integer step), none
    when there is no such file. A damaged line is passed over."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict) and _is_int(row.get("step")):
            rows.append(row)
    return rows


@contextmanager
def _memory_for(cfg: ModelConfig):
    """Turn a failed allocation for a model of cfg's size into a one-line error."""
    try:
        yield
    except (MemoryError, ValueError):  # numpy raises ValueError when the size overflows
        n = sum(math.prod(shape) for _, shape in parameter_shapes(cfg))
        raise CharrnnError(
            f"a model of {n:,} parameters does not fit in memory (training keeps 4 float32 copies, "
            f"{16 * n / 1e9:,.1f} GB); use a smaller --hidden, --layers or --embed") from None


class Trainer:
    """One training run: set up from flags or a checkpoint, then run() to the budget.

    Every input is checked before anything is written: a refused run leaves the
    file system as it was."""

    def __init__(self, corpus, out_dir, model_flags: dict, train_flags: dict,
                 vocab_path=None, resume=None, overwrite: bool = False, progress: bool = True):
        given_model = {k: v for k, v in model_flags.items() if v is not None}
        given_train = {k: v for k, v in train_flags.items() if v is not None}
        check_flags(given_model, MODEL_FLAGS)
        check_flags(given_train, TRAIN_FLAGS)
        self.corpus = check_text_file(corpus)
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.resumed = resume is not None
        self._check_out_dir(resume, overwrite)
        self._seen_run_files = self._run_files_state()
        if resume is not None:
            self._setup_resume(resume, given_model, given_train, vocab_path, overwrite)
        else:
            self._setup_fresh(given_model, given_train, vocab_path)
        self.ids = self._load_corpus(resume, vocab_path)
        self.train_ids, self.val_ids = split_train_val(self.ids, self.tcfg.val_frac)
        self.batches = self._batches()
        self.state["steps_per_epoch"] = self.batches.steps_per_epoch
        self.fingerprint = corpus_fingerprint(self.corpus)
        self._create_out_dir()
        self._check_resumed_corpus()
        self.net = Network(self.cfg, self.params)
        with _memory_for(self.cfg):
            self.grads = self.params.zeros_like()
        self.metrics = self._load_metrics()
        self.interrupted = False
        self.stop_signal = None  # the signal that interrupted the run: SIGINT (Ctrl-C) or SIGTERM
        self.noted_eval_cost = False  # the slow-validation note is said once a run

    # ----- set-up -------------------------------------------------------------

    def _check_out_dir(self, resume, overwrite):
        """Refuse an --out that cannot hold a run, or whose run would be replaced
        without --overwrite. Writes nothing."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise CharrnnError(f"--out {out} is a file, not a directory")
        existing = [name for name in RUN_FILES[:2] if (out / name).exists()]
        if not existing or overwrite:
            return
        if resume is None:
            raise CharrnnError(
                f"{out} already holds a run ({', '.join(existing)}); continue it with "
                f"--resume {out / 'last.safetensors'}, or pass --overwrite to start over")
        if Path(resume).resolve().parent != out.resolve():
            raise CharrnnError(
                f"{out} already holds another run ({', '.join(existing)}) that resuming {resume} "
                f"would replace; give another --out, or pass --overwrite to replace it")

    def _create_out_dir(self):
        out = self.out_dir
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
        # What a killed run left half-written: never renamed, so never needed; but a
        # run going on in this directory is writing them, so not while one does.
        with self._locked_out_dir():
            remove_stale_temp_files(out, RUN_FILES)

    def _locked_out_dir(self):
        """--out locked for this process (see fileio.locked_directory), or a refusal: two
        runs writing one directory would interleave their checkpoints and metrics."""
        return locked_directory(self.out_dir, f"another charrnn train is writing to {self.out_dir}; "
                                              f"wait for it to end, or give another --out")

    def _run_files_state(self):
        """What this run's files in --out are now: (name, mtime, size) or None for each."""
        state = []
        for name in RUN_FILES:
            try:
                st = (self.out_dir / name).stat()
                state.append((name, st.st_mtime_ns, st.st_size))
            except OSError:
                state.append(None)
        return tuple(state)

    def _setup_fresh(self, given_model, given_train, vocab_path):
        self.tcfg = TrainConfig(**given_train)
        if vocab_path is not None:
            self.vocab = Vocab.load(vocab_path)
        else:
            self.vocab = scan_vocab([self.corpus])
        self.cfg = ModelConfig(vocab_size=len(self.vocab), **given_model)
        if self.cfg.cell != "lstm":
            if given_train.get("forget_bias", 0.0) != 0.0:
                raise CharrnnError(f"--forget-bias applies to --cell lstm only, not {self.cfg.cell}")
            self.tcfg = replace(self.tcfg, forget_bias=0.0)  # the cell has no forget gate
        with _memory_for(self.cfg):
            self.params = ParamBuffer(self.cfg, np.float32)
            self.moments = {slot: self.params.zeros_like() for slot in ("exp_avg", "exp_avg_sq")}
        init_params(self.params, np.random.default_rng(self.tcfg.seed), forget_bias=self.tcfg.forget_bias)
        self.state = {"step": 0, "elapsed": 0.0, "best_val_loss": None, "best_step": None,
                      "val_loss": None}
        self.carry = None
        self.resumed_fingerprint = None

    def _setup_resume(self, resume, given_model, given_train, vocab_path, overwrite):
        ckpt = load_checkpoint(resume)
        if ckpt.optimizer is None or "step" not in ckpt.state:
            raise CharrnnError(f"{resume} has no optimiser state, so training cannot resume from it")
        if vocab_path is not None and Vocab.load(vocab_path) != ckpt.vocab:
            raise CharrnnError(f"--vocab {vocab_path} differs from the vocabulary of {resume}")
        for name, value in given_model.items():
            if getattr(ckpt.config, name) != value:
                raise CharrnnError(f"--{name} {value} conflicts with the checkpoint's "
                                   f"{name} = {getattr(ckpt.config, name)}; drop the flag to resume")
        try:
            saved_train = TrainConfig.from_dict(ckpt.train)
        except (CharrnnError, TypeError) as e:
            raise CharrnnError(f"{resume}: bad training settings: {e}") from None
        for name in DATA_SETTINGS:
            if name in given_train and given_train[name] != getattr(saved_train, name):
                raise CharrnnError(
                    f"--{name.replace('_', '-')} {given_train[name]} conflicts with the checkpoint's "
                    f"{getattr(saved_train, name)}; a resumed run keeps it so that it sees the same data")
        if "forget_bias" in given_train and given_train["forget_bias"] != saved_train.forget_bias:
            raise CharrnnError(f"--forget-bias {given_train['forget_bias']:g} conflicts with the checkpoint's "
                               f"{saved_train.forget_bias:g}; it sets the initial weights, so only a new run can "
                               "change it")
        if any(name in given_train for name in BUDGET):  # a new budget replaces the saved one
            saved_train = replace(saved_train, **{name: None for name in BUDGET})
        self.tcfg = replace(saved_train, **given_train)
        self.vocab, self.cfg, self.params = ckpt.vocab, ckpt.config, ckpt.params
        self.moments = ckpt.optimizer
        self.state = {"elapsed": 0.0, **ckpt.state}
        self.carry = ckpt.carry
        self.resumed_fingerprint = self.state.get("corpus_sha256")
        if not overwrite:
            self._check_last_on_disk(resume)
            self._adopt_best_on_disk()

    def _check_last_on_disk(self, resume):
        """Resuming from an older checkpoint of this run (such as best.safetensors)
        would replace a newer last.safetensors: that takes --overwrite."""
        last = self.out_dir / "last.safetensors"
        if not last.exists() or last.resolve() == Path(resume).resolve():
            return
        try:
            last_step = read_metadata(last)["state"].get("step")
        except CharrnnError:
            return  # unreadable: nothing to keep
        if isinstance(last_step, int) and last_step > self.step:
            raise CharrnnError(
                f"{last} is at step {last_step}, ahead of {resume} (step {self.step}), and resuming "
                f"would replace it; pass --overwrite to do so, or give another --out")

    def _adopt_best_on_disk(self):
        """best.safetensors is only ever replaced by a lower validation loss, also
        across resumes: start from the lower of the checkpoint's and the file's."""
        best = self.out_dir / "best.safetensors"
        if not best.exists():
            return
        try:
            state = read_metadata(best)["state"]
        except CharrnnError:
            return
        loss, step = state.get("val_loss"), state.get("best_step")
        if not (isinstance(loss, (int, float)) and math.isfinite(loss)):
            return
        mine = self.state.get("best_val_loss")
        if mine is None or loss < mine:
            self.state["best_val_loss"] = loss
            self.state["best_step"] = step if isinstance(step, int) else None

    def _load_corpus(self, resume, vocab_path) -> np.ndarray:
        try:
            return load_ids(self.corpus, self.vocab)
        except UnknownCharactersError as e:
            if resume is not None:
                raise CharrnnError(
                    f"{self.corpus} has characters that are not in the vocabulary of {resume}: "
                    f"{describe_chars(e.chars)}; a resumed model cannot learn new characters") from None
            raise CharrnnError(
                f"{self.corpus} has characters that are not in --vocab {vocab_path}: "
                f"{describe_chars(e.chars)}; rebuild it with charrnn vocab") from None

    def _batches(self) -> Batches:
        t = self.tcfg
        try:
            return Batches(self.train_ids, t.batch_size, t.seq_len)
        except CharrnnError as e:
            held_out = (f" (--val-frac {t.val_frac:g} holds out the last {len(self.val_ids):,} of its "
                        f"{len(self.ids):,} characters for validation)") if len(self.val_ids) else ""
            raise CharrnnError(f"{self.corpus}: {e}{held_out}") from None

    def _check_resumed_corpus(self):
        if self.resumed_fingerprint is not None and self.resumed_fingerprint != self.fingerprint:
            self.log(f"note: {self.corpus} differs from the corpus the checkpoint was trained on; "
                     "training continues on the new text")

    def _load_metrics(self) -> list[dict]:
        """Earlier evaluations of this run (when resuming into the same directory),
        up to the resumed step: later rows belong to checkpoints being replaced."""
        if not self.resumed:
            return []
        return [row for row in read_metrics(self.out_dir / "metrics.jsonl") if row["step"] <= self.step]

    # ----- budget -------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.state["step"]

    def budget_reached(self, elapsed: float) -> str | None:
        """The budget flag that is spent, or None while training should go on."""
        t = self.tcfg
        if t.max_steps is not None and self.step >= t.max_steps:
            return f"--max-steps {t.max_steps}"
        if t.max_epochs is not None and self.step >= t.max_epochs * self.batches.steps_per_epoch:
            return f"--max-epochs {t.max_epochs:g} ({math.ceil(t.max_epochs * self.batches.steps_per_epoch)} steps)"
        if t.max_time is not None and elapsed >= t.max_time:
            return f"--max-time {t.max_time:g}s"
        return None

    def finished(self, elapsed: float) -> bool:
        return self.budget_reached(elapsed) is not None

    def budget_spent(self, elapsed: float) -> float:
        """The largest fraction spent of the budgets given (steps done of --max-steps,
        epochs done of --max-epochs, elapsed of --max-time), 0 to 1."""
        t = self.tcfg
        spent = [0.0]
        if t.max_steps is not None:
            spent.append(self.step / t.max_steps if t.max_steps else 1.0)
        if t.max_epochs is not None:
            spent.append(self.step / (t.max_epochs * self.batches.steps_per_epoch))
        if t.max_time is not None:
            spent.append(elapsed / t.max_time)
        return min(1.0, max(spent))

    def lr(self, elapsed: float) -> float:
        """The learning rate of the next step: the one place it comes from. It depends
        on self.step, self.tcfg and elapsed, all of which a checkpoint restores
        (elapsed only for --max-time runs, the only ones it can matter to)."""
        t = self.tcfg
        return t.lr * lr_factor(t.lr_schedule, self.budget_spent(elapsed), self.step, t.warmup_steps, t.min_lr_frac)

    # ----- one step -----------------------------------------------------------

    def train_step(self, state: RecurrentState, elapsed: float):
        """One optimiser step on the next batch. Returns (loss, state after the batch)."""
        from charrnn.engine import threads
        from charrnn.kernels.optim import adam_update, sum_squares

        nthreads = threads()
        k = self.step % self.batches.steps_per_epoch
        if k == 0:  # a new epoch starts the streams again from the beginning
            state = RecurrentState.zeros(self.cfg, self.tcfg.batch_size)
        x, y = self.batches.batch(k)
        self.grads.flat[:] = 0.0
        loss, new_state = self.net.loss_and_grad(x, y, state, self.grads, step_key(self.tcfg.seed, self.step))
        norm = math.sqrt(sum_squares(self.grads.flat, nthreads))
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise self.diverged(self.step + 1, "training loss" if not math.isfinite(loss) else "gradient norm")
        # clipping by global norm is a scale Adam applies as it reads the gradient
        clip = self.tcfg.grad_clip / (norm + 1e-6) if norm > self.tcfg.grad_clip else 1.0
        adam_update(self.params.flat, self.grads.flat, self.moments["exp_avg"].flat,
                    self.moments["exp_avg_sq"].flat, self.lr(elapsed), ADAM_BETAS[0], ADAM_BETAS[1],
                    ADAM_EPS, self.step + 1, nthreads, clip)
        self.params.touch()
        return loss, new_state

    def diverged(self, step: int, what: str) -> CharrnnError:
        return CharrnnError(
            f"training diverged at step {step}: the {what} is not finite; try a lower --lr "
            f"(this run used {self.tcfg.lr:g}); the checkpoints already in {self.out_dir} are untouched")

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
        """Write metrics.jsonl, then best.safetensors (if improved), then last.safetensors,
        each atomically. In this order a kill between two writes leaves files that
        resuming from last.safetensors reconciles: it drops metrics rows past its step,
        and takes the best loss from best.safetensors when that is lower."""
        self.state["corpus_sha256"] = self.fingerprint
        rows = "".join(json.dumps(row) + "\n" for row in self.metrics)
        atomic_write_text(self.out_dir / "metrics.jsonl", rows)
        ckpt = self.checkpoint(carry)
        if improved:
            save_checkpoint(self.out_dir / "best.safetensors", ckpt)
        save_checkpoint(self.out_dir / "last.safetensors", ckpt)

    def save_interrupted(self, carry) -> None:
        """On Ctrl-C or SIGTERM: last.safetensors only, without the (slow) validation; best and
        metrics stay as they are."""
        self.state["val_loss"] = None  # these weights have not been validated
        self.save(carry, improved=False)

    def log(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)

    def record_evaluation(self, carry, train_loss, elapsed, chars_per_sec) -> float | None:
        """Score the validation split, log it, and write checkpoints. A non-finite
        validation loss or weight stops training before anything is written."""
        val = self.validate()
        if val is not None and not math.isfinite(val):
            raise self.diverged(self.step, "validation loss")
        if not np.isfinite(self.params.flat).all():
            raise self.diverged(self.step, "model's weights")
        if val is None:
            improved = True  # no validation split: best is the newest
        else:
            best = self.state.get("best_val_loss")
            improved = best is None or val < best
            if improved:
                self.state["best_val_loss"], self.state["best_step"] = val, self.step
        self.state["val_loss"] = val
        row = {"step": self.step, "epoch": round(self.step / self.batches.steps_per_epoch, 4),
               "train_loss": train_loss, "val_loss": val,
               "val_bits_per_char": None if val is None else val / math.log(2),
               "lr": self.lr(elapsed), "elapsed": round(elapsed, 3),
               "chars_per_sec": round(chars_per_sec, 1)}
        self.metrics.append(row)
        self.save(carry, improved)
        shown = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        self.log(f"step {self.step}: train loss {shown(train_loss)}, val loss {shown(val)}"
                 + (" (best)" if improved and val is not None else ""))
        return val

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
        t = self.tcfg
        if t.max_steps is None and t.max_epochs is None and t.max_time is None:
            raise CharrnnError("no training budget: give --max-steps, --max-epochs or --max-time")
        spent = self.budget_reached(self.state["elapsed"])
        if self.resumed and spent:
            raise CharrnnError(f"nothing to do: the checkpoint is at step {self.step}, which already meets "
                               f"{spent}; give a larger --max-steps, --max-epochs or --max-time")
        with self._locked_out_dir():
            # The checks of --out and what was read from it (a resumed checkpoint, the
            # metrics) hold only if no other run wrote there since this one was set up.
            if self._run_files_state() != self._seen_run_files:
                raise CharrnnError(f"another charrnn train wrote to {self.out_dir} after this one was set up; "
                                   f"start this one again")
            return self._run()

    def _run(self) -> dict:
        """run() once --out is locked."""
        from tqdm import tqdm

        t = self.tcfg
        self.log(self.describe())
        state = self.carry if self.carry is not None else RecurrentState.zeros(self.cfg, t.batch_size)
        if state.h.shape[1] != t.batch_size:
            state = RecurrentState.zeros(self.cfg, t.batch_size)
        previous = {signum: signal.getsignal(signum) for signum in self.STOP_SIGNALS}
        try:
            for signum in self.STOP_SIGNALS:
                signal.signal(signum, self._on_stop_signal)
        except ValueError:  # not the main thread: signals cannot reach us anyway
            previous = {}
        start = time.perf_counter() - self.state["elapsed"]
        # disable=None: no bar when stderr is not a terminal, where its redraws would
        # fill a log file with one line per refresh.
        bar = tqdm(total=t.max_steps, initial=self.step, file=sys.stderr, unit="step",
                   disable=None if self.progress else True, dynamic_ncols=True, leave=False)
        losses, timed_chars, timed_seconds = [], 0, 0.0
        self.start_step = self.step
        saved_step = self.step if self.resumed else None  # the step last.safetensors holds
        every_steps = t.eval_every if _is_int(t.eval_every) else None
        every_seconds = eval_seconds(t.eval_every)
        next_eval = self._next_eval_time(self.state["elapsed"], every_seconds)
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
                if (every_steps is not None and self.step % every_steps == 0) or self.state["elapsed"] >= next_eval:
                    t_eval = time.perf_counter()
                    self.record_evaluation(state, float(np.mean(losses)), self.state["elapsed"], rate)
                    self._note_evaluation_cost(time.perf_counter() - t_eval, timed_seconds)
                    saved_step, losses, timed_chars, timed_seconds = self.step, [], 0, 0.0
                    next_eval = self._next_eval_time(time.perf_counter() - start, every_seconds)
            if saved_step != self.step:
                if self.interrupted:
                    if self.step != self.start_step:
                        self.save_interrupted(state)
                else:
                    rate = timed_chars / timed_seconds if timed_seconds else 0.0
                    train_loss = float(np.mean(losses)) if losses else None
                    self.record_evaluation(state, train_loss, self.state["elapsed"], rate)
        finally:
            for signum, handler in previous.items():
                if handler is not None:  # None: set from outside Python, which Python cannot restore
                    signal.signal(signum, handler)
            bar.close()
        return self.summary()

    def _note_evaluation_cost(self, seconds: float, train_seconds: float) -> None:
        """Say once when validation takes a large share of the time (a big corpus)."""
        if seconds > 5 and seconds > 0.2 * train_seconds and not self.noted_eval_cost:
            self.noted_eval_cost = True
            self.log(f"note: validating {len(self.val_ids):,} characters took {seconds:.0f}s, against "
                     f"{train_seconds:.0f}s of training since the last evaluation; a larger --eval-every or a "
                     "smaller --val-frac leaves more of the budget to training")

    @staticmethod
    def _next_eval_time(elapsed: float, every_seconds: float | None) -> float:
        """With --eval-every as time: the first multiple of it after elapsed, so that
        evaluations stay at whole multiples (1m, 2m, ...) whatever they cost."""
        if every_seconds is None:
            return math.inf
        return (math.floor(elapsed / every_seconds) + 1) * every_seconds

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
        """What run() did; "trained" is whether it took any step (so wrote last.safetensors)."""
        return {"step": self.step, "val_loss": self.state.get("val_loss"),
                "best_val_loss": self.state.get("best_val_loss"), "best_step": self.state.get("best_step"),
                "elapsed": self.state["elapsed"], "interrupted": self.interrupted,
                "signal": self.stop_signal,
                "trained": self.step != self.start_step,
                "last": str(self.out_dir / "last.safetensors"), "best": str(self.out_dir / "best.safetensors")}
