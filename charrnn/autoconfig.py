"""Settings chosen from the budget: when a new run is given none of the model and
optimiser settings (CHOSEN), its model, dropout, weight decay and learning rate are
chosen from the corpus's size, the budget and this machine's speed.

The rule, measured on tiny-shakespeare with budgets of 1, 5 and 20 minutes (the
README's "Quality" section lists each run): the model is the largest of CANDIDATES
that still sees the training text at least MIN_EPOCHS times in the budget. Up to 512
units one wide layer beat two narrower ones of the same speed (at 1 and 5 minutes),
so the candidates widen one layer to 512, then deepen (at 20 minutes one 1x1024 run
was no better than three of 3x512, which spread over 0.02), then widen the three
layers to 768: on Zen 5, where 3x512 sees the text ten times in 20 minutes and
scored 1.4008-1.4053 with dropout 0.25-0.4, 3x768 saw it 4.7 times and scored
1.3940 and 1.3998 (3x1024, 2.3 times: 1.4524). Dropout grows with how much the
model can learn by heart -- its passes over the text times its parameters
per character of text -- but gently: a small model seeing the text four times did
best with none, and more than 0.1 was never better for a larger model measured, up
to 3x512 seeing the text five times; seeing it nine times (a faster machine), 3x512
scored better with 0.25 than with 0.14, so dropout grows again beyond that, to
0.25 (with weight drop on as well, 0.35 over-restrained 3x768). A model
given dropout also gets AdamW's weight decay, sized so that it adds up to the same
over any run (1x512 at 5 minutes: 1.4255 and 1.4272 held out with it, 1.4313-1.4349
in three runs without; too much: 1.4718). Past the exposure where more dropout stopped
paying, the recurrent weights also get weight drop (DropConnect), which did pay there:
3x512 seeing the text 8 times in 20 minutes on a 2-core Xeon scored 1.3828 with 0.2,
against 1.3929 and 1.3944 without (one run with, two without), while seeing it 3.6 times
it lost 0.017 with the same.
The learning rate falls as the layer widens. No weight average: with the learning
rate decaying to zero it gave nothing measurable at the end of a run (within 0.002
nats/char either way, paired, in every run measured).

A time budget needs the speed of each candidate on this machine (speed.py: measured
once, then remembered); a budget in steps or epochs never depends on speed, so such
runs are reproducible from their settings. The time a plan leaves to training is what
validation does not take, from each candidate's measured validation speed (3x768
validating tiny-shakespeare's 111 k held-out characters took about 36 s of every
minute on a 2-core Xeon: a plan that assumed 7% chose it and got less than one pass).
A time budget on a CPU with AMX tiles or AVX512-BF16 also trains in bfloat16
(precision bf16) unless a precision is given: since the time loops' products run in
bfloat16 too, the same minutes buy 1.6-1.8 times the steps for 1x512 on an Intel Xeon
(AMX), 1.45 times on an AMD EPYC Zen 5 (AVX512-BF16), at no cost per step (Xeon, 5
minutes, three runs each, alternating: 1.4172-1.4236 held out, mean 1.4196, against
float32's 1.4343-1.4393, mean 1.4371; Zen 5, 8,200 steps each: 1.4367 against 1.4476).
The plan below is made from the bf16 speed, so the extra steps get the regularisation
their extra passes need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from charrnn.config import ModelConfig, TrainConfig, format_duration
from charrnn.model import parameter_count, parameter_shapes

# The settings chosen together: give any one of them and none is chosen.
CHOSEN = ("cell", "layers", "hidden", "embed", "dropout", "batch_size", "seq_len", "lr", "ema", "weight_decay",
          "weight_drop", "locked_dropout")
# LSTM layers x hidden, fastest first.
CANDIDATES = ((1, 128), (1, 256), (1, 384), (1, 512), (2, 512), (3, 512), (3, 768))
# Every model measured that saw the text fewer than 3 times scored worse than the next
# smaller one, which saw it more often: 1x768 at 2.7 passes (5 minutes), 3x1024 at 2.3
# and 3x768 at 2.5 (20 minutes; 1.4409 on a 2-core Xeon in bf16, where 3x512 at 5.2
# passes scored 1.3944). A plan of 3 passes also keeps clear of a plan's usual
# overestimate (runs kept up 86-97% of the planned speed).
MIN_EPOCHS = 3.0
EVAL_SHARE = 0.93  # the part of a time budget left to training steps when validation's speed is unknown
EMBED = 64
# AdamW's weight decay shrinks a weight untouched by its gradient by lr * wd a step, by
# exp(-SHRINK) over a run whose steps add up to SHRINK / wd of learning rate.
SHRINK = 0.75
PLATEAU_END = 24.0  # the exposure (see dropout_for) beyond which dropout grows again, and weight drop begins
WEIGHT_DROP_MAX = 0.2  # the one weight drop measured to help (weight_drop_for); 0.4 was worse
# Dropout stops growing here: past PLATEAU_END weight drop comes in as well, and the two
# together over-restrain at more (3x768 at 20 minutes on Zen 5 with weight drop 0.2:
# 1.3835 with dropout 0.25, against 1.3918-1.3970 in three runs with 0.35).
DROPOUT_MAX = 0.25


@dataclass(frozen=True)
class Choice:
    model: dict  # model settings by name
    train: dict  # training settings by name
    reason: str  # what was chosen and why, in a line


def wanted(given_model: dict, given_train: dict) -> bool:
    """Whether a new run leaves the choice to charrnn: none of CHOSEN was given."""
    return not any(name in given_model or name in given_train for name in CHOSEN)


def exposure(epochs: float, params: int, n_chars: int) -> float:
    """How much a model of `params` weights can learn by heart of n_chars characters it
    sees `epochs` times: epochs x params / n_chars."""
    return epochs * params / max(1, n_chars)


def dropout_for(epochs: float, params: int, n_chars: int) -> float:
    """Dropout for a model of `params` weights that will see n_chars characters
    `epochs` times, from its exposure x = epochs x params / n_chars: 0.05 per doubling
    of x up to 0.1 at x = 4 (none below about x = 1.5); 0.1 up to x = PLATEAU_END, where
    more was never better by more than the noise between runs (x from 6 to 27); then
    0.15 per doubling, to DROPOUT_MAX: 3x512 seeing the text 9 times (x = 49) scored
    better with 0.25 than with 0.14 (without weight drop), and with weight drop 0.25
    beat 0.35."""
    x = exposure(epochs, params, n_chars)
    if x <= 4.0:
        p = 0.05 * math.log2(max(x, 1.0))
    else:
        p = 0.1 + 0.15 * math.log2(max(x / PLATEAU_END, 1.0))
    return _rate(min(DROPOUT_MAX, p))


def weight_drop_for(epochs: float, params: int, n_chars: int) -> float:
    """Weight drop on the recurrent weights, only past PLATEAU_END, where dropout alone
    stopped paying: 0.33 per doubling of the exposure beyond it, to WEIGHT_DROP_MAX.
    3x512 at 20 minutes on a 2-core Xeon (x = 37 planned, 8.3 passes taken) scored
    1.3828 with 0.2 against 1.3929 and 1.3944 without; at x = 20 (3.6 passes) 0.2
    cost 0.017."""
    x = exposure(epochs, params, n_chars)
    return _rate(min(WEIGHT_DROP_MAX, 0.33 * math.log2(max(x / PLATEAU_END, 1.0))))


def _rate(p: float) -> float:
    """A drop probability as the rule gives it: two decimals, and none below 0.03."""
    return round(p, 2) if p >= 0.03 else 0.0


def weight_decay_for(dropout: float, lr: float, steps: float) -> float:
    """AdamW's weight decay for a model that learns enough by heart to need dropout (none
    for one that does not: both restrain the same excess), sized to the run: what
    counts is the decay over the whole run, wd x the sum of the learning rates of its
    steps (lr x steps / 2 under the cosine decay), held at SHRINK. For 1x512 at 5
    minutes (3,700 steps at 4e-3) sums of 0.37 and 1.5 scored alike and 3.7 far worse."""
    if dropout <= 0:
        return 0.0
    return float(f"{SHRINK / (lr * max(steps, 100.0) / 2):.2g}")


def lr_for(layers: int, hidden: int) -> float:
    """4e-3 at 512 units, scaled by sqrt(512 / hidden); a quarter less for deeper models."""
    lr = 4e-3 * math.sqrt(512 / hidden) * (1.0 if layers == 1 else 0.75)
    return float(f"{lr:.2g}")


def precision_for(budget: TrainConfig, bf16_ready: bool) -> str:
    """bf16 for a budget in time alone (where more steps a second buy a better model)
    on a machine that can multiply in bfloat16 (AMX or AVX512-BF16); float32
    otherwise, so that a budget in steps or epochs trains alike on every machine."""
    timed = budget.max_steps is None and budget.max_epochs is None
    return "bf16" if timed and bf16_ready else "float32"


def training_share(budget: TrainConfig, n_chars: int, validation_speed: float | None) -> float:
    """The part of a time budget left to training steps. Validation scores the held-out
    text (val_frac of the corpus) each time the run's clock, validation included,
    passes a multiple of eval_every; the one at the end comes after the budget. Without
    a validation speed, or with eval_every in steps, EVAL_SHARE."""
    every = budget.eval_seconds
    if budget.val_frac <= 0:
        return 1.0
    if validation_speed is None or every is None:
        return EVAL_SHARE
    held_out = n_chars * budget.val_frac / (1.0 - budget.val_frac)
    inside = max(0, math.ceil(budget.max_time / every) - 1)
    return max(0.05, 1.0 - inside * held_out / validation_speed / budget.max_time)


def choose(n_chars: int, vocab_size: int, budget: TrainConfig, speed_of=None, validation_of=None,
           line_chars: float | None = None, longest_line: int = 0) -> Choice:
    """The settings for a corpus of n_chars training characters (a line-mode corpus:
    its lines with their ends) and budget's max_time, max_steps or max_epochs, trained
    in budget's precision; speed_of(ModelConfig, batch, seq_len) -> chars/s (at that
    precision) and validation_of(...) -> chars/s of validation are asked only for a
    time budget. Line mode: line_chars, the characters a line has on average (its end
    too), and longest_line, the most: a step reads batch lines rather than batch rows
    of seq_len characters, and seq_len must hold the longest line."""
    batch, seq_len = TrainConfig().batch_size, TrainConfig().seq_len
    per_step = batch * (line_chars or seq_len)  # characters a step learns from
    fixed_epochs = _epochs_without_speed(n_chars, budget, per_step)
    picked = None
    for layers, hidden in CANDIDATES:
        cfg = ModelConfig(vocab_size=vocab_size, layers=layers, hidden=hidden, embed=EMBED)
        if fixed_epochs is not None:
            epochs, speed = fixed_epochs, None
        else:
            speed = speed_of(cfg, batch, seq_len)
            validation = validation_of(cfg, batch, seq_len) if validation_of is not None else None
            epochs = speed * budget.max_time * training_share(budget, n_chars, validation) / n_chars
        if picked is None or epochs >= MIN_EPOCHS:
            picked = (cfg, epochs, speed)
        elif fixed_epochs is None:
            break  # the larger candidates are slower still: no need to know their speed
        if fixed_epochs is not None and _capacity_enough(cfg, n_chars):
            break
    cfg, epochs, speed = picked
    params = parameter_count(cfg)
    dropout = dropout_for(epochs, params, n_chars)
    lr = lr_for(cfg.layers, cfg.hidden)
    model = {"cell": "lstm", "layers": cfg.layers, "hidden": cfg.hidden, "embed": EMBED, "dropout": dropout,
             "weight_drop": weight_drop_for(epochs, params, n_chars)}
    train = {"batch_size": batch, "seq_len": max(seq_len, longest_line), "lr": lr, "ema": 0.0,
             "weight_decay": weight_decay_for(dropout, lr, epochs * n_chars / per_step), "precision": budget.precision}
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


def _capacity_enough(cfg: ModelConfig, n_chars: int) -> bool:
    """For a budget in steps or epochs (where time is no limit): the first candidate whose
    recurrent layers have about as many parameters as the text has characters (larger
    ones learn it by heart)."""
    recurrent = sum(math.prod(shape) for name, shape in parameter_shapes(cfg) if name.startswith("rnn."))
    return recurrent >= n_chars


def _reason(model, train, n_chars, budget, epochs, speed) -> str:
    regularisers = f", weight decay {train['weight_decay']:g}" if train["weight_decay"] else ""
    regularisers += f", weight drop {model['weight_drop']:g}" if model["weight_drop"] else ""
    bf16 = ", bfloat16 products" if train["precision"] == "bf16" else ""
    shape = f"{model['layers']}×{model['hidden']}, dropout {model['dropout']:g}{regularisers}, " \
            f"B={train['batch_size']}, lr {train['lr']:g}{bf16}"
    size = f"{n_chars / 1e6:.1f} M" if n_chars >= 1e5 else f"{n_chars:,}"
    if speed is None:
        spent = f"{budget.max_steps:,} steps" if budget.max_steps is not None else f"{budget.max_epochs:g} epochs"
        return f"{shape}: {spent} on {size} characters ≈ {epochs:.1f} epochs"
    return (f"{shape}: {format_duration(budget.max_time)} on {size} characters at ≈ {speed / 1000:.0f} k chars/s "
            f"≈ {epochs:.1f} epochs")
