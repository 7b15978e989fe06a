"""A run directory: its files, its lock, its metrics log, and the checks that keep
one run from writing over another.

Files: last.safetensors (the newest checkpoint), best.safetensors (the lowest
validation loss so far) and metrics.jsonl (one JSON object per evaluation), each
written whole (see fileio). Nothing here trains; the training loop (train.py) calls
these at set-up and at each evaluation.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

from charrnn.checkpoint import Checkpoint, read_metadata, same_run, save_checkpoint
from charrnn.config import is_int
from charrnn.errors import CharrnnError, named
from charrnn.fileio import atomic_write_text, locked_directory, remove_stale_temp_files

LAST, BEST, METRICS = "last.safetensors", "best.safetensors", "metrics.jsonl"
RUN_FILES = (LAST, BEST, METRICS)


def read_metrics(path) -> list[dict]:
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
        if isinstance(row, dict) and is_int(row.get("step")):
            rows.append(row)
    return rows


# A validation loss this far above the best (nats/char) is a rise, not noise.
RISE = 0.005


def overfitting(rows: list[dict]) -> str | None:
    """Words saying that the validation loss has risen since its best evaluation while
    the training loss fell, from a run's metrics rows; None when it has not."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    scored = [r for r in rows if number(r.get("val_loss")) and number(r.get("train_loss"))]
    if len(scored) < 2:
        return None
    best, last = min(scored, key=lambda r: r["val_loss"]), scored[-1]
    if last["val_loss"] > best["val_loss"] + RISE and last["train_loss"] < best["train_loss"]:
        return (f"overfitting: the validation loss rose from {best['val_loss']:.4f} (step {best['step']:,}) to "
                f"{last['val_loss']:.4f} (step {last['step']:,}) while the training loss fell from "
                f"{best['train_loss']:.4f} to {last['train_loss']:.4f}")
    return None


def resume_path(resume) -> Path:
    """The checkpoint a resume names: a file, or a run directory's last.safetensors."""
    p = Path(resume)
    if not p.is_dir():
        return p
    if not (p / LAST).is_file():
        raise CharrnnError(f"{named('resume', p)} is a directory without {LAST}: give a checkpoint file")
    return p / LAST


class RunDirectory:
    """The directory a run writes (out). Every check happens before anything is
    written: a refused run leaves the file system as it was."""

    def __init__(self, out):
        self.path = Path(out)
        self._seen = None

    def file(self, name: str) -> Path:
        return self.path / name

    def check(self, resume, overwrite: bool) -> None:
        """Refuse an out that cannot hold a run, or whose run would be replaced without
        overwrite; remember its files' state for lock() to compare. Writes nothing."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise CharrnnError(f"{named('out', out)} is a file, not a directory")
        existing = [name for name in (LAST, BEST) if self.file(name).exists()]
        self._seen = self._files_state()
        if not existing or overwrite:
            return
        if resume is None:
            raise CharrnnError(
                f"{out} already holds a run ({', '.join(existing)}); continue it with "
                f"{named('resume', self.file(LAST))}, or pass {named('overwrite')} to start over")
        if Path(resume).resolve().parent != out.resolve():
            raise CharrnnError(
                f"{out} already holds another run ({', '.join(existing)}) that resuming {resume} "
                f"would replace; give another {named('out')}, or pass {named('overwrite')} to replace it")

    def check_last(self, resume, step: int) -> None:
        """Resuming from an older checkpoint of this run (such as best.safetensors)
        would replace a newer last.safetensors: that takes overwrite."""
        last = self.file(LAST)
        if not last.exists() or last.resolve() == Path(resume).resolve():
            return
        try:
            last_step = read_metadata(last)["state"].get("step")
        except CharrnnError:
            return  # unreadable: nothing to keep
        if is_int(last_step) and last_step > step:
            raise CharrnnError(
                f"{last} is at step {last_step}, ahead of {resume} (step {step}), and resuming "
                f"would replace it; pass {named('overwrite')} to do so, or give another {named('out')}")

    def adopt_best(self, resumed: Checkpoint) -> None:
        """best.safetensors is only ever replaced by a lower validation loss, also
        across resumes: start from the lower of the resumed checkpoint's and the
        file's, if the file is of the same run (checkpoint.same_run; --overwrite may
        have left another run's there)."""
        best, state = self.file(BEST), resumed.state
        if not best.exists():
            return
        try:
            meta = read_metadata(best)
        except CharrnnError:
            return
        if not same_run(best, meta, resumed):
            return
        saved = meta["state"]
        loss, step = saved.get("val_loss"), saved.get("best_step")
        if not (isinstance(loss, (int, float)) and math.isfinite(loss)):
            return
        if state.best_val_loss is None or loss < state.best_val_loss:
            state.best_val_loss = loss
            state.best_step = step if is_int(step) else None

    def create(self) -> None:
        """Make the directory (checked writable) and clear what a killed run left."""
        out = self.path
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CharrnnError(f"cannot create {named('out', out)}: {e.strerror or e}") from None
        probe = out / ".charrnn-write-test"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise CharrnnError(f"{named('out', out)} is not writable: {e.strerror or e}") from None
        # What a killed run left half-written: never renamed, so never needed; but a
        # run going on in this directory is writing them, so not while one does.
        with self._locked():
            remove_stale_temp_files(out, RUN_FILES)

    @contextmanager
    def lock(self):
        """A block in which this process alone writes the directory (see
        fileio.locked_directory). The checks of check() and what was read from the
        directory hold only if no other run wrote there since: refused if one did."""
        with self._locked():
            if self._files_state() != self._seen:
                raise CharrnnError(f"another charrnn train wrote to {self.path} after this one was set up; "
                                   f"start this one again")
            yield self

    def _locked(self):
        return locked_directory(self.path, f"another charrnn train is writing to {self.path}; "
                                           f"wait for it to end, or give another {named('out')}")

    def _files_state(self):
        """The run's files now: (name, mtime, size) or None for each."""
        state = []
        for name in RUN_FILES:
            try:
                st = self.file(name).stat()
                state.append((name, st.st_mtime_ns, st.st_size))
            except OSError:
                state.append(None)
        return tuple(state)

    def metrics(self, up_to_step: int) -> list[dict]:
        """The evaluations logged up to a step: later rows belong to checkpoints that
        a resume from that step replaces."""
        return [row for row in read_metrics(self.file(METRICS)) if row["step"] <= up_to_step]

    def save(self, metrics: list[dict], ckpt: Checkpoint, improved: bool) -> None:
        """Write metrics.jsonl, then best.safetensors (if improved), then last.safetensors,
        each atomically. In this order a kill between two writes leaves files that
        resuming from last.safetensors reconciles: it drops metrics rows past its step,
        and takes the best loss from best.safetensors when that is lower."""
        atomic_write_text(self.file(METRICS), "".join(json.dumps(row) + "\n" for row in metrics))
        if improved:
            save_checkpoint(self.file(BEST), ckpt)
        save_checkpoint(self.file(LAST), ckpt)
