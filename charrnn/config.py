"""Every setting of charrnn, defined once: its default, its one-sentence help, its
kind (how text becomes a value) and its rule.

Settings are fields of frozen dataclasses: ModelConfig (a model's shape),
TrainConfig (how it is trained; both saved in every checkpoint) and SampleConfig
(how text is generated). Each field is made by setting(), which keeps a Setting in
the field's metadata. The command line builds its options from them (cli.py), the
Python API takes them as keyword arguments and the server as request fields, and
every value is checked here, when a config is made: the error names the setting
(see errors.named), and each front end names it its own way.

Help texts refer to other settings as {name}; render_help writes them as flags for
the command line.

No numpy or Numba here: importing this module is cheap.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

from charrnn.errors import CharrnnError, SettingError, UnknownSettingError, named

GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # gate blocks of each cell's weight matrices
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("float32", "bf16")


# ----- rules --------------------------------------------------------------------

def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def plain_number(v):
    """v, with a number of another type (numpy's int64, float32, ...) as Python's int or
    float: configs go into checkpoints and answers as JSON, which knows only those."""
    if is_int(v):
        return int(v)
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v)
    return v


@dataclass(frozen=True)
class Rule:
    """What a value must be: check(value) is True, described as `what`."""

    check: Callable[[Any], bool]
    what: str


POSITIVE_INT = Rule(lambda v: is_int(v) and v >= 1, "a positive integer")
NON_NEGATIVE_INT = Rule(lambda v: is_int(v) and v >= 0, "a non-negative integer")
POSITIVE_NUMBER = Rule(lambda v: is_real(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Rule(lambda v: is_real(v) and v >= 0, "a non-negative number")
FINITE = Rule(is_real, "a finite number")
FRACTION = Rule(lambda v: is_real(v) and 0 <= v < 1, "in [0, 1)")
UNIT_INTERVAL = Rule(lambda v: is_real(v) and 0 <= v <= 1, "in [0, 1]")
PROBABILITY = Rule(lambda v: is_real(v) and 0 < v <= 1, "a number in (0, 1]")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")


def one_of(choices) -> Rule:
    return Rule(lambda v: v in choices, f"one of {', '.join(choices)}")


# ----- durations ---------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smh]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text) -> float:
    """Seconds of a time span: 90, 90s, 5m, 1.5h, 1h30m (a number is seconds).
    ValueError, with a message for the user, for anything else or zero."""
    if is_real(text):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(s):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if not s or pos != len(s):
            raise ValueError(f"{text!r} is not a duration (examples: 90s, 5m, 1h30m)")
    if not seconds > 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def parse_steps_or_duration(text) -> int | str:
    """A number of steps (500) or a time span with its unit (90s, 1m), the latter as
    its seconds in a string ("60s"), which is how TrainConfig keeps it."""
    if is_int(text):
        return int(text)
    s = str(text).strip()
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if not s or s[-1].lower() not in "smh":
        raise ValueError(f"{text!r} is neither a number of steps nor a duration (examples: 500, 90s, 1m)")
    return f"{parse_duration(s):g}s"


def duration_seconds(value) -> float | None:
    """The seconds of a steps-or-duration kept as time ("60s"); None for a number of
    steps or anything else."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            seconds = float(value[:-1])
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds > 0 else None
    return None


def format_duration(seconds: float) -> str:
    """60 -> '1m', 90 -> '1m30s', 5400 -> '1h30m', 2.5 -> '2.5s'."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


STEPS_OR_DURATION = Rule(lambda v: (is_int(v) and v >= 1) or duration_seconds(v) is not None,
                         "a positive integer (steps) or a duration such as 1m")


# ----- settings ----------------------------------------------------------------------

# What a kind of setting is given as on the command line: a Click type name (see cli.py).
# "chars": a string whose escapes (\\n, \\t) the command line understands; "texts": several
# strings so (a repeatable flag); "path": a file name.
KINDS = ("int", "float", "choice", "duration", "steps-or-duration", "flag", "text", "chars", "texts", "path")


@dataclass(frozen=True)
class Setting:
    """One setting: name, default, help (other settings as {name}), kind (see KINDS),
    rule (None: any value of the kind), choices (kind "choice"), whether None means
    "not set" (optional), a short flag, whether the command line has it, and the
    environment variable it is also read from (the flag wins)."""

    name: str
    default: Any
    help: str
    kind: str
    rule: Rule | None = None
    choices: tuple = ()
    optional: bool = False
    short: str | None = None
    cli: bool = True
    env: str | None = None

    def check(self, value) -> Any:
        """The value as the config keeps it (a duration given as text becomes seconds),
        or a SettingError naming the setting."""
        if value is None and self.optional:
            return None
        if self.kind == "duration" and isinstance(value, str):
            try:
                value = parse_duration(value)
            except ValueError:
                raise SettingError(self.name, value, "a duration such as 90s, 5m or 1h30m") from None
        elif self.kind == "steps-or-duration" and isinstance(value, str):
            try:
                value = parse_steps_or_duration(value)
            except ValueError:
                pass  # the rule below refuses it
        elif self.kind == "texts" and isinstance(value, (list, tuple, str)):
            value = (value,) if isinstance(value, str) else tuple(value)  # a string: one text
        if self.rule is not None and not self.rule.check(value):
            raise SettingError(self.name, value, self.rule.what)
        return plain_number(value)

    def shown_default(self) -> str | None:
        """The default as help shows it, None when there is none to show."""
        d = self.default
        if d is None or d is False or d == "" or d == ():
            return None
        if self.kind == "steps-or-duration" and duration_seconds(d) is not None:
            return format_duration(duration_seconds(d))
        return f"{d:g}" if isinstance(d, float) else str(d)


def setting(default, help: str, kind: str, rule: Rule | None = None, **options):
    """A dataclass field for a setting (see Setting); its name is the field's."""
    assert kind in KINDS, kind
    spec = dict(default=default, help=help, kind=kind, rule=rule, **options)
    return field(default=default, metadata={"setting": spec})


def settings_of(cls) -> dict[str, Setting]:
    """The Settings of a config class, in field order."""
    return {f.name: Setting(name=f.name, **f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata}


def render_help(text: str, style: Callable[[str], str] = lambda name: name) -> str:
    """A help text with each {name} written by style (flags for the command line)."""
    return re.sub(r"\{([a-z_0-9]+)\}", lambda m: style(m.group(1)), text)


def unknown_names(names, known, what: str) -> UnknownSettingError:
    """An error naming the unknown names, with the closest known one for each."""
    parts = []
    for name in sorted(names):
        close = difflib.get_close_matches(str(name), list(known), n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
    return UnknownSettingError(f"unknown {what}: {', '.join(parts)}", names)


class Settings:
    """Base of the config dataclasses: every value is checked when one is made."""

    WHAT = "settings"  # how errors name the group

    def __post_init__(self):
        for name, s in settings_of(type(self)).items():
            object.__setattr__(self, name, s.check(getattr(self, name)))

    def to_dict(self) -> dict:
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def check_values(cls, values: dict) -> dict:
        """Some values of this config's settings, checked one by one (for a partial
        set, such as the flags a user gave): a copy with durations in seconds."""
        specs = settings_of(cls)
        unknown = set(values) - set(specs)
        if unknown:
            raise unknown_names(unknown, specs, cls.WHAT)
        return {name: specs[name].check(value) for name, value in values.items()}

    @classmethod
    def from_dict(cls, d: dict, missing: dict | None = None):
        """A config from a dict such as a checkpoint keeps: unknown keys are refused
        (a newer checkpoint format, which format_version refuses first, or a damaged
        file); a key that is absent takes missing[key] if given, else its default."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise unknown_names(unknown, known, cls.WHAT)
        return cls(**{**(missing or {}), **d})

    def replace(self, **changes):
        return replace(self, **changes)


# ----- the model --------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig(Settings):
    """What defines a model's shape; saved in every checkpoint."""

    WHAT = "model settings"

    vocab_size: int = setting(None, "Characters in the vocabulary (from the corpus or a vocabulary file).", "int",
                              POSITIVE_INT, cli=False)
    cell: str = setting("lstm", "Recurrent cell.", "choice", one_of(tuple(GATES)), choices=tuple(GATES))
    layers: int = setting(2, "Number of recurrent layers.", "int", POSITIVE_INT)
    hidden: int = setting(256, "Hidden units per layer.", "int", POSITIVE_INT)
    embed: int = setting(64, "Character embedding size.", "int", POSITIVE_INT)
    dropout: float = setting(0.0, "Dropout between layers and before the output.", "float", FRACTION)
    locked_dropout: bool = setting(False, "With {dropout}: one mask per stream and batch, the same at every time step "
                                   "(variational dropout, AWD-LSTM's locked dropout), not one per character.",
                                   "flag", BOOLEAN)
    weight_drop: float = setting(0.0, "Drop each recurrent (hidden-to-hidden) weight with this probability for "
                                 "one training step, the same for every stream and time step (DropConnect: "
                                 "AWD-LSTM's weight drop).", "float", FRACTION)
    lines: bool = setting(False, "One sample per line: each non-empty line is learnt on its own, from a fresh "
                          "state, and ends at its newline; sample and evaluate follow it.", "flag", BOOLEAN)

    @property
    def gates(self) -> int:
        return GATES[self.cell]


def describe_options(config: dict) -> str:
    """A model's dropout (and whether it is locked), weight drop (when any) and line mode
    (when on), as the run's first line and `charrnn info` show them; config:
    ModelConfig.to_dict(), or a checkpoint's, which may predate all but dropout."""
    weight_drop = config.get("weight_drop")
    locked = " (locked)" if config.get("locked_dropout") and config["dropout"] else ""
    return (f"dropout {config['dropout']:g}{locked}{f', weight drop {weight_drop:g}' if weight_drop else ''}"
            f"{', line mode' if config.get('lines') else ''}")


# ----- training ---------------------------------------------------------------------

# The budget: a resumed run given any of these replaces the saved budget with them.
BUDGET = ("max_steps", "max_epochs", "max_time")
DEFAULT_BUDGET = {"max_time": 300.0}  # a new run given no budget trains for 5 minutes
# Settings that fix which character every step sees: a resumed run must keep them.
DATA_SETTINGS = ("batch_size", "seq_len", "val_frac", "seed")
# What a checkpoint written before the learning-rate schedule existed was trained
# with: resuming it keeps the constant rate.
LEGACY_TRAIN = {"lr_schedule": "constant", "warmup_steps": 0, "min_lr_frac": 0.0, "forget_bias": 0.0,
                "weight_decay": 0.0}


@dataclass(frozen=True)
class TrainConfig(Settings):
    """How to train; saved in every checkpoint."""

    WHAT = "training settings"

    batch_size: int = setting(32, "Parallel streams per batch (B).", "int", POSITIVE_INT)
    seq_len: int = setting(50, "Characters per stream per batch (T, the BPTT length).", "int", POSITIVE_INT)
    lr: float = setting(4e-3, "Adam's peak learning rate.", "float", POSITIVE_NUMBER)
    lr_schedule: str = setting("cosine", "How the learning rate decays from {lr} to {min_lr_frac} x {lr} over the "
                               "budget.", "choice", one_of(SCHEDULES), choices=SCHEDULES)
    warmup_steps: int = setting(100, "Raise the learning rate linearly over the first N steps.", "int",
                                NON_NEGATIVE_INT)
    min_lr_frac: float = setting(0.0, "The fraction of {lr} the decay reaches at the end of the budget.", "float",
                                 UNIT_INTERVAL)
    weight_decay: float = setting(0.0, "Decoupled weight decay (AdamW): each step shrinks every weight by the "
                                  "learning rate x this (0: plain Adam).", "float", NON_NEGATIVE_NUMBER)
    grad_clip: float = setting(5.0, "Clip the gradient's global norm to this.", "float", POSITIVE_NUMBER)
    ema: float = setting(0.0, "Validate and save a moving average of the weights, with this decay per step (0: "
                         "off; 0.999 averages about the last 1,000 steps).", "float", FRACTION)
    val_frac: float = setting(0.1, "Fraction of the corpus held out for validation: its end, or in line mode a "
                              "random choice of its lines.", "float", FRACTION)
    eval_every: int | str = setting("60s", "Validate and checkpoint every N steps (500) or every so much training "
                                    "time (1m, 90s).", "steps-or-duration", STEPS_OR_DURATION)
    max_steps: int | None = setting(None, "Stop after this many optimiser steps in total.", "int", NON_NEGATIVE_INT,
                                    optional=True)
    max_epochs: float | None = setting(None, "Stop after this many passes over the training text.", "float",
                                       POSITIVE_NUMBER, optional=True)
    # seconds of training, counted across resumes
    max_time: float | None = setting(None, "Stop after this much training time, e.g. 90s, 5m, 1h.", "duration",
                                     POSITIVE_NUMBER, optional=True)
    patience: int | None = setting(None, "Stop after N evaluations in a row without a new best validation loss "
                                         "(with a validation split: {val_frac} above 0).",
                                   "int", POSITIVE_INT, optional=True)
    seed: int = setting(0, "Seed for initialisation and dropout.", "int", NON_NEGATIVE_INT)
    precision: str = setting("float32", "bf16: train with the matrix products (the time loops' too) in bfloat16 on the "
                             "CPU's AMX tiles or AVX512-BF16 (Intel Xeon Sapphire Rapids or later, AMD Zen 4 or "
                             "later; float32 weights, optimiser, sums and cells; validation, sampling and evaluation "
                             "stay float32). Settings chosen for a time budget pick bf16 where the CPU has either.", "choice",
                             one_of(PRECISIONS), choices=PRECISIONS)
    forget_bias: float = setting(0.0, "Added to the LSTM's forget-gate biases at initialisation (new runs only).",
                                 "float", FINITE)
    init: str | None = setting(None, "Start from this checkpoint's weights (fine-tuning): a new run with a fresh "
                               "optimiser, schedule and budget; the model's shape comes from it.", "path", TEXT,
                               optional=True)

    @property
    def has_budget(self) -> bool:
        return any(getattr(self, name) is not None for name in BUDGET)

    @property
    def eval_seconds(self) -> float | None:
        """eval_every as seconds of training time, None when it counts steps."""
        return duration_seconds(self.eval_every)

    @property
    def eval_steps(self) -> int | None:
        return self.eval_every if is_int(self.eval_every) else None

    @classmethod
    def from_dict(cls, d: dict, missing: dict | None = None) -> "TrainConfig":
        """Settings a checkpoint saved; those it predates take the values such runs used."""
        return super().from_dict(d, LEGACY_TRAIN if missing is None else missing)


def new_run_settings(model: dict, train: dict, vocab_size: int) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new run from the settings a user gave (any others take their
    defaults; no budget means DEFAULT_BUDGET)."""
    tcfg = TrainConfig(**train)
    if not tcfg.has_budget:
        tcfg = tcfg.replace(**DEFAULT_BUDGET)
    cfg = ModelConfig(vocab_size=vocab_size, **model)
    if cfg.cell != "lstm":
        if train.get("forget_bias", 0.0) != 0.0:
            raise CharrnnError(f"{named('forget_bias')} applies to {named('cell', 'lstm')} only, not {cfg.cell}")
        tcfg = tcfg.replace(forget_bias=0.0)  # the cell has no forget gate
    return cfg, check_patience(tcfg)


def check_patience(tcfg: TrainConfig) -> TrainConfig:
    """Refuse patience without a validation split: it would never stop a run."""
    if tcfg.patience is not None and tcfg.val_frac == 0:
        raise CharrnnError(f"{named('patience')} counts evaluations without a new best validation loss, and "
                           f"{named('val_frac', format(tcfg.val_frac, 'g'))} holds out no validation text")
    return tcfg


def resumed_run_settings(saved: TrainConfig, model: ModelConfig, given_model: dict,
                         given_train: dict) -> TrainConfig:
    """The training settings of a resumed run: the checkpoint's, with the ones the
    user gave replacing them; settings that fix the model, the data each step sees or
    the initial weights must agree with the checkpoint's."""
    for name, value in given_model.items():
        if getattr(model, name) != value:
            raise CharrnnError(f"{named(name, value)} conflicts with the checkpoint's "
                               f"{name} = {getattr(model, name)}; drop the flag to resume")
    for name in DATA_SETTINGS:
        if name in given_train and given_train[name] != getattr(saved, name):
            raise CharrnnError(
                f"{named(name, given_train[name])} conflicts with the checkpoint's "
                f"{getattr(saved, name)}; a resumed run keeps it so that it sees the same data")
    if "forget_bias" in given_train and given_train["forget_bias"] != saved.forget_bias:
        raise CharrnnError(f"{named('forget_bias', format(given_train['forget_bias'], 'g'))} conflicts with the "
                           f"checkpoint's {saved.forget_bias:g}; it sets the initial weights, so only a new run can "
                           "change it")
    if any(name in given_train for name in BUDGET):  # a new budget replaces the saved one
        saved = saved.replace(**{name: None for name in BUDGET})
    return check_patience(saved.replace(**given_train))


# ----- generation -------------------------------------------------------------------

@dataclass(frozen=True)
class SampleConfig(Settings):
    """How text is generated from a checkpoint."""

    WHAT = "sampling settings"

    length: int = setting(500, "Characters to generate after the prime (at most; see {stop}).", "int",
                          NON_NEGATIVE_INT, short="-n")
    temperature: float = setting(0.8, "Below 1: safer, more repetitive text; above 1: more surprising text.",
                                 "float", POSITIVE_NUMBER, short="-t")
    top_k: int | None = setting(None, "Draw only from the K most likely characters at each step.", "int",
                                POSITIVE_INT, optional=True, short="-k")
    top_p: float | None = setting(None, "Draw only from the fewest most likely characters whose probability "
                                  "reaches P (nucleus sampling; applied after temperature and {top_k}).", "float",
                                  PROBABILITY, optional=True)
    min_p: float | None = setting(None, "Draw only from the characters at least P times as likely as the most "
                                  "likely one (applied after {top_p}).", "float", UNIT_INTERVAL, optional=True)
    prime: str = setting("", "Text to start from; printed before the sample.", "text", TEXT, short="-p")
    seed: int | None = setting(None, "Seed for reproducible samples (default: random, shown on stderr).", "int",
                               NON_NEGATIVE_INT, optional=True)
    argmax: bool = setting(False, "Always take the most likely character (no randomness; ignores {temperature}, "
                           "{top_k}, {top_p}, {min_p}).", "flag", BOOLEAN)
    ban: str = setting("", "Characters that are never drawn, e.g. \"0123456789\"; \\n, \\t, \\\\ are "
                       "understood.", "chars", TEXT)
    dry_multiplier: float = setting(0.0, "Repetition control (llama.cpp's DRY): how strongly to push down a "
                                    "character that would extend a repetition of earlier text (0: off; try 0.8).",
                                    "float", Rule(lambda v: is_real(v) and v >= 0, "a non-negative number"))
    dry_base: float = setting(1.75, "DRY: the penalty grows by this factor with each character a repetition "
                              "already has beyond {dry_allowed_length}.", "float",
                              Rule(lambda v: is_real(v) and v >= 1, "a number of at least 1"))
    dry_allowed_length: int = setting(2, "DRY: a repetition shorter than this may be extended without penalty.",
                                      "int", POSITIVE_INT)
    dry_last_n: int = setting(1024, "DRY: how many of the last characters (prime included) a repetition is "
                              "looked for in.", "int", POSITIVE_INT)
    beam: int | None = setting(None, "Beam search with N beams: the most likely continuation of {length} "
                               "characters (deterministic; N = 1 is {argmax}).", "int", POSITIVE_INT, optional=True)
    num_samples: int = setting(1, "Generate N samples together, printed one after another, each headed by its "
                               "own seed.", "int", POSITIVE_INT)
    unique: bool = setting(False, "Line mode: keep drawing until {num_samples} distinct new lines (neither "
                           "training nor validation lines) exist.", "flag", BOOLEAN)
    stop: tuple = setting((), "End a sample where it produces this text (kept). Repeatable; \\n, \\t, \\\\ are "
                          "understood.", "texts",
                          # (an empty one is refused with the stops a vocabulary cannot produce: sample.py)
                          Rule(lambda v: isinstance(v, tuple) and all(isinstance(s, str) for s in v),
                               "a string or a list of strings"))

    # What beam search decides itself: given with beam, these are refused.
    NOT_WITH_BEAM = ("temperature", "top_k", "top_p", "min_p", "argmax", "dry_multiplier", "num_samples", "unique")

    @classmethod
    def from_given(cls, values: dict) -> "SampleConfig":
        """The settings of a call from the ones a user gave (the others take their
        defaults), refusing combinations that make no sense."""
        values = cls.check_values(values)
        if values.get("beam") is not None:
            clash = [name for name in cls.NOT_WITH_BEAM if name in values]
            if clash:
                raise CharrnnError(f"{named(clash[0])} does not apply to beam search ({named('beam')}), which "
                                   "finds the most likely text itself; leave it out")
        return cls(**values)

    @property
    def dry(self) -> bool:
        return self.dry_multiplier > 0

# ----- serving ---------------------------------------------------------------------

PORT = Rule(lambda v: is_int(v) and 0 <= v <= 65535, "a port number in [0, 65535] (0: any free port)")


@dataclass(frozen=True)
class ServeConfig(Settings):
    """How `charrnn serve` runs (see charrnn/serve)."""

    WHAT = "server settings"

    host: str = setting("127.0.0.1", "Address to listen on: 127.0.0.1 is this machine only, 0.0.0.0 every "
                        "interface (then set {api_key}).", "text", Rule(lambda v: isinstance(v, str) and v != "",
                                                                        "an address"))
    port: int = setting(8000, "Port to listen on (0: any free one; the address is printed on stderr).", "int",
                        PORT)
    api_key: str | None = setting(None, "Require 'Authorization: Bearer KEY' on the API (/v1/..., /metrics); "
                                  "/health and the playground page stay open.", "text",
                                  Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string"),
                                  optional=True, env="CHARRNN_API_KEY")
    max_streams: int = setting(64, "Streams generated together at most (a request with n samples takes n); "
                               "further requests wait in a queue.", "int", POSITIVE_INT)
    max_length: int = setting(4096, "The most characters one request may generate (its max_tokens).", "int",
                              POSITIVE_INT)
    threads: int | None = setting(None, "Numba threads of the engine (default: one less than the cores, at "
                                  "least 1, leaving a core to the HTTP side).", "int", POSITIVE_INT, optional=True)
