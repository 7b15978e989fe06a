"""What a checkpoint or a run directory holds, for `charrnn info`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from charrnn.checkpoint import load_checkpoint
from charrnn.config import ModelConfig, TrainConfig, describe_options, settings_of
from charrnn.errors import CharrnnError, as_flag
from charrnn.rundir import BEST, LAST, METRICS, overfitting, read_metrics


def _number(v) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _epoch(step, steps_per_epoch) -> float | None:
    """Passes over the training text done by a step."""
    if not (isinstance(step, int) and isinstance(steps_per_epoch, int) and steps_per_epoch > 0):
        return None
    return round(step / steps_per_epoch, 4)


def _row_at(step, rows: list[dict]) -> dict:
    return next((row for row in reversed(rows) if row["step"] == step), {})


def describe(path) -> dict:
    """Everything `charrnn info` shows about a checkpoint file or a run directory
    (whose last.safetensors, else best.safetensors, is described, with the
    validation history of its metrics.jsonl)."""
    p = Path(path)
    run_dir = None
    if not p.exists():
        raise CharrnnError(f"{p}: no such checkpoint file or run directory")
    if p.is_dir():
        run_dir = p
        found = [p / name for name in (LAST, BEST) if (p / name).is_file()]
        if not found:
            raise CharrnnError(f"{p} is not a run directory (it has no last.safetensors or best.safetensors)")
        p = found[0]
    ckpt = load_checkpoint(p, with_training_state=False)
    rows = read_metrics(p.parent / METRICS)
    state, train = ckpt.state, ckpt.train
    step, best_step = state.step, state.best_step
    elapsed = _number(state.elapsed)
    if elapsed is None:
        elapsed = _number(_row_at(step, rows).get("elapsed"))
    return {
        "path": str(path),
        "checkpoint": str(p),
        "run_dir": None if run_dir is None else str(run_dir),
        "format_version": ckpt.format_version,
        "charrnn_version": ckpt.charrnn_version,
        "config": ckpt.config.to_dict(),
        "parameters": int(ckpt.params.flat.size),
        "vocab": ckpt.vocab.chars,
        "resumable": ckpt.resumable,
        "step": step,
        "epoch": _epoch(step, state.steps_per_epoch),
        "elapsed": elapsed,
        "val_loss": state.val_loss,
        "best_val_loss": state.best_val_loss,
        "best_step": best_step,
        "best_epoch": _epoch(best_step, state.steps_per_epoch),
        "best_elapsed": _number(_row_at(best_step, rows).get("elapsed")),
        "corpus_sha256": state.corpus_sha256,
        "chosen": state.chosen,
        "train": train,
        "overfitting": overfitting(rows) if run_dir is not None else None,
        "history": None if run_dir is None else [
            {"step": row["step"], **{k: _number(row.get(k)) for k in ("epoch", "train_loss", "val_loss")}}
            for row in rows],
    }


# ----- text -----------------------------------------------------------------------

def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def settings_flags(config: dict, train: dict) -> str:
    """The training settings as `charrnn train` flags."""
    flags = []
    names = [name for cls in (ModelConfig, TrainConfig) for name, s in settings_of(cls).items() if s.cli]
    for name in names:
        value = config.get(name, train.get(name))
        if value is None or value is False:
            continue
        if value is True:  # a flag
            flags.append(as_flag(name, None))
            continue
        if name == "max_time" and _number(value) is not None:
            value = f"{value:g}s"
        elif isinstance(value, float):
            value = f"{value:g}"
        flags.append(as_flag(name, value))
    return " ".join(flags)


def vocab_preview(chars: list[str], limit: int = 80) -> str:
    """The first characters as a JSON string (escapes show newlines and the like)."""
    shown = json.dumps("".join(chars[:limit]), ensure_ascii=False)
    return shown + (f" and {len(chars) - limit:,} more" if len(chars) > limit else "")


def loss_chart(points: list[tuple[int, float]], height: int = 8, width: int = 60) -> list[str]:
    """A small text chart of (step, loss) points, oldest left: one column per point,
    or per run of neighbouring points (their mean) when there are more than width."""
    if not points:
        return []
    n = len(points)
    columns = min(n, width)
    values = []
    for c in range(columns):
        chunk = points[c * n // columns:(c + 1) * n // columns]
        values.append(sum(v for _, v in chunk) / len(chunk))
    top, bottom = max(values), min(values)
    span = top - bottom
    levels = [0 if span == 0 else round((top - v) / span * (height - 1)) for v in values]
    label_width = max(len(f"{top:.3f}"), len(f"{bottom:.3f}"))
    lines = []
    for r in range(height):
        label = f"{top:.3f}" if r == 0 else f"{bottom:.3f}" if r == height - 1 else ""
        cells = "".join("*" if level == r else " " for level in levels)
        lines.append(f"  {label:>{label_width}} |{cells.rstrip()}")
    lines.append(f"  {'':>{label_width}} +{'-' * columns}")
    lines.append(f"  {'':>{label_width}}  step {points[0][0]:,} to {points[-1][0]:,}")
    return lines


def format_text(info: dict) -> str:
    c = info["config"]
    loss = lambda v: "n/a" if v is None else f"{v:.4f} nats/char ({v / math.log(2):.4f} bits/char)"  # noqa: E731
    trained = [f"{info['step']:,} steps" if isinstance(info["step"], int) else "unknown steps"]
    if info["epoch"] is not None:
        trained.append(f"{info['epoch']:g} epochs")
    if info["elapsed"] is not None:
        trained.append(f"{_duration(info['elapsed'])} of training")
    best = loss(info["best_val_loss"])
    if info["best_step"] is not None:
        when = [f"step {info['best_step']:,}"]
        if info["best_epoch"] is not None:
            when.append(f"epoch {info['best_epoch']:g}")
        if info["best_elapsed"] is not None:
            when.append(f"after {_duration(info['best_elapsed'])}")
        best += " at " + ", ".join(when)
    fields = [
        ("checkpoint", info["checkpoint"] + (" (resumable)" if info["resumable"] else " (weights only)")),
        ("model", f"{c['cell']}, {c['layers']} layer{'s' if c['layers'] != 1 else ''} of {c['hidden']} units, "
                  f"embedding {c['embed']}, {describe_options(c)}"),
        ("parameters", f"{info['parameters']:,}"),
        ("vocabulary", f"{len(info['vocab']):,} characters: {vocab_preview(info['vocab'])}"),
        ("trained", ", ".join(trained)),
        ("val loss", f"last {loss(info['val_loss'])}"),
        ("best val", best),
        ("settings", settings_flags(c, info["train"]) or "n/a"),
        *([("chosen", info["chosen"])] if info["chosen"] else []),
        ("corpus", f"sha256 {info['corpus_sha256']}" if info["corpus_sha256"] else "n/a"),
        ("version", f"written by charrnn {info['charrnn_version']}, format {info['format_version']}"),
    ]
    lines = [f"{name:<11} {value}" for name, value in fields]
    if info["history"] is not None:
        points = [(row["step"], row["val_loss"]) for row in info["history"] if row["val_loss"] is not None]
        lines.append("")
        if points:
            lines.append(f"validation loss (nats/char) at {len(points)} evaluation{'s' if len(points) != 1 else ''}:")
            lines += loss_chart(points)
            if info["overfitting"]:
                lines.append(info["overfitting"])
        else:
            lines.append("no validation losses recorded in metrics.jsonl")
    return "\n".join(lines)
