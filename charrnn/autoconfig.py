"""Settings chosen from the budget: when a new run is given none of the model and
optimiser settings (CHOSEN), its model, dropout, learning rate and weight average are
chosen from the corpus's size, the budget and this machine's speed.

The rule, measured on tiny-shakespeare (the README's "Quality" section says what was
tried): the model is the largest of CANDIDATES that still sees the training text at
least MIN_EPOCHS times in the budget; dropout grows with the passes it makes, since
the more often a model sees the same text the more it learns it by heart; a weight
average is kept. A time budget needs the speed of each candidate on this machine
(speed.py: measured once, then remembered); a budget in steps or epochs never
depends on speed, so such runs are reproducible from their settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from charrnn.config import ModelConfig, TrainConfig, format_duration

# The settings chosen together: give any one of them and none is chosen.
CHOSEN = ("cell", "layers", "hidden", "embed", "dropout", "batch_size", "seq_len", "lr", "ema")
CANDIDATES = ((1, 128), (2, 128), (2, 256), (2, 384), (2, 512), (3, 512))  # LSTM layers x hidden
MIN_EPOCHS = 3.0
EVAL_SHARE = 0.93  # the part of a time budget left to training steps (validation takes the rest)


@dataclass(frozen=True)
class Choice:
    model: dict  # model settings by name
    train: dict  # training settings by name
    reason: str  # what was chosen and why, in a line


def wanted(given_model: dict, given_train: dict) -> bool:
    """Whether a new run leaves the choice to charrnn: none of CHOSEN was given."""
    return not any(name in given_model or name in given_train for name in CHOSEN)


def dropout_for(epochs: float) -> float:
    """Dropout for a model that will see its text `epochs` times: none for one or two
    passes, then rising by 0.05 a pass, to 0.3."""
    return round(min(0.3, max(0.0, 0.05 * (epochs - 2.0))), 2)


def lr_for(hidden: int) -> float:
    return 3e-3 if hidden >= 384 else 4e-3


def ema_for(steps: float) -> float:
    """A weight average over about the last 5% of the steps (at least 100, at most 2,000)."""
    return round(1.0 - 1.0 / min(2000.0, max(100.0, 0.05 * steps)), 5)


def choose(n_chars: int, vocab_size: int, budget: TrainConfig, speed_of=None) -> Choice:
    """The settings for a corpus of n_chars training characters (a line-mode corpus:
    its lines with their ends) and budget's max_time, max_steps or max_epochs;
    speed_of(ModelConfig, batch, seq_len) -> chars/s is asked only for a time budget."""
    batch, seq_len = TrainConfig().batch_size, TrainConfig().seq_len
    per_step = batch * seq_len
    fixed_epochs = _epochs_without_speed(n_chars, budget, per_step)
    picked = None
    for layers, hidden in CANDIDATES:
        cfg = ModelConfig(vocab_size=vocab_size, layers=layers, hidden=hidden)
        if fixed_epochs is not None:
            epochs, speed = fixed_epochs, None
        else:
            speed = speed_of(cfg, batch, seq_len)
            epochs = speed * budget.max_time * EVAL_SHARE / n_chars
        if picked is None or epochs >= MIN_EPOCHS:
            picked = (layers, hidden, epochs, speed)
        elif fixed_epochs is None:
            break  # the larger candidates are slower still: no need to know their speed
        if fixed_epochs is not None and _capacity_enough(layers, hidden, n_chars):
            break
    layers, hidden, epochs, speed = picked
    steps = epochs * n_chars / per_step
    model = {"cell": "lstm", "layers": layers, "hidden": hidden, "embed": 64, "dropout": dropout_for(epochs)}
    train = {"batch_size": batch, "seq_len": seq_len, "lr": lr_for(hidden), "ema": ema_for(steps)}
    return Choice(model, train, _reason(model, train, n_chars, budget, epochs, speed))


def _epochs_without_speed(n_chars: int, budget: TrainConfig, per_step: int) -> float | None:
    """The passes over the text that a budget in steps or epochs allows (the smaller of
    the two), None for a time budget alone."""
    passes = []
    if budget.max_steps is not None:
        passes.append(budget.max_steps * per_step / n_chars)
    if budget.max_epochs is not None:
        passes.append(budget.max_epochs)
    return min(passes) if passes else None


def _capacity_enough(layers: int, hidden: int, n_chars: int) -> bool:
    """For a budget in steps or epochs (where time is no limit): the first candidate with
    about as many parameters as the text has characters (larger ones learn it by heart)."""
    params = 4 * hidden * (64 + hidden) + 4 * hidden * 2 * hidden * (layers - 1)
    return params >= n_chars


def _reason(model, train, n_chars, budget, epochs, speed) -> str:
    shape = f"{model['layers']}×{model['hidden']}, dropout {model['dropout']:g}, B={train['batch_size']}, " \
            f"lr {train['lr']:g}, weight average {train['ema']:g}"
    size = f"{n_chars / 1e6:.1f} M" if n_chars >= 1e5 else f"{n_chars:,}"
    if speed is None:
        spent = f"{budget.max_steps:,} steps" if budget.max_steps is not None else f"{budget.max_epochs:g} epochs"
        return f"{shape}: {spent} on {size} characters ≈ {epochs:.1f} epochs"
    return (f"{shape}: {format_duration(budget.max_time)} on {size} characters at ≈ {speed / 1000:.0f} k chars/s "
            f"≈ {epochs:.1f} epochs")
