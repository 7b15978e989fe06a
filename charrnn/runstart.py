"""How a training run starts: new (weights initialised), resumed (everything from a
checkpoint of the run), or fine-tuned (weights from another model's checkpoint, with
a fresh optimiser, schedule and budget, and its vocabulary grown by the corpus's new
characters). Each gives a Start, which the training loop takes from there."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from charrnn.checkpoint import TrainingState, load_checkpoint
from charrnn.config import ModelConfig, TrainConfig, new_run_settings, resumed_run_settings
from charrnn import autoconfig, isa, speed
from charrnn.data import iter_text, scan_vocab
from charrnn.errors import CharrnnError, named
from charrnn.lines import END, read_lines
from charrnn.model import Parameters, RecurrentState, init_params, memory_for
from charrnn.optim import Adam
from charrnn.rundir import RunDirectory
from charrnn.vocab import Vocab, describe_chars


@dataclass
class Start:
    cfg: ModelConfig
    tcfg: TrainConfig
    vocab: Vocab
    params: Parameters
    optimizer: Adam
    state: TrainingState
    carry: RecurrentState | None = None  # the state carried into the next batch (streams)
    fingerprint: str | None = None  # the corpus a resumed run was trained on
    val_hashes: np.ndarray | None = None  # a resumed line-mode run's validation lines
    average: Parameters | None = None  # a resumed run's moving average of the weights (ema)
    note: str | None = None  # what the start has to say (characters added by fine-tuning)


def corpus_vocab(corpus, lines: bool) -> Vocab:
    """Every character of the corpus; line mode's start and end marker too."""
    vocab = scan_vocab([corpus])
    return vocab if not lines or END in vocab else Vocab.from_chars([*vocab.chars, END])


def new_run(corpus, given_model: dict, given_train: dict, vocab_path, log=None) -> Start:
    lines = given_model.get("lines", False)
    vocab = Vocab.load(vocab_path) if vocab_path is not None else corpus_vocab(corpus, lines)
    if lines and END not in vocab:
        raise CharrnnError(f"{named('vocab', vocab_path)} has no newline, which line mode uses to start and end "
                           "each line")
    cfg, tcfg = new_run_settings(given_model, given_train, len(vocab))
    chosen = None
    if autoconfig.wanted(given_model, given_train):
        if "precision" not in given_train:
            tcfg = tcfg.replace(precision=autoconfig.precision_for(tcfg, _bf16_ready()))
        chosen = _choose(corpus, cfg, tcfg, log)
        cfg, tcfg = new_run_settings({**chosen.model, **given_model}, {**chosen.train, **given_train}, len(vocab))
    with memory_for(cfg):
        params = Parameters(cfg, np.float32)
        optimizer = Adam(params)
    init_params(params, np.random.default_rng(tcfg.seed), forget_bias=tcfg.forget_bias)
    state = TrainingState(step=0, elapsed=0.0, chosen=None if chosen is None else chosen.reason)
    note = None if chosen is None else f"settings chosen for this budget: {chosen.reason}"
    return Start(cfg, tcfg, vocab, params, optimizer, state, note=note)


def _bf16_ready() -> bool:
    """Whether this process can train in bfloat16 (precision bf16)."""
    try:
        isa.enable_bf16()
    except CharrnnError:
        return False
    return True


def _choose(corpus, cfg: ModelConfig, tcfg: TrainConfig, log) -> autoconfig.Choice:
    """The settings autoconfig chooses for this corpus and budget."""
    line_chars, longest = None, 0
    if cfg.lines:
        lengths = [len(line) + 1 for line in read_lines(corpus)]  # each line's end is predicted too
        text_chars, longest = sum(lengths), max(lengths, default=0)
        line_chars = text_chars / len(lengths) if lengths else None
    else:
        text_chars = sum(len(t) for t in iter_text(corpus))
    n_chars = max(1, int(text_chars * (1 - tcfg.val_frac)))
    told = []

    def speed_of(candidate, batch, seq_len):
        if not told and log is not None and not speed.known(candidate, batch, seq_len, tcfg.precision):
            log("measuring this machine's training and validation speed for the model sizes to choose from (once; "
                f"remembered in {speed.cache_path()})")
            told.append(True)
        return speed.chars_per_second(candidate, batch, seq_len, tcfg.precision)[0]

    def validation_of(candidate, batch, seq_len):
        return speed.validation_chars_per_second(candidate, batch, seq_len)[0]

    return autoconfig.choose(n_chars, cfg.vocab_size, tcfg, speed_of, validation_of, line_chars, longest)


def resumed_run(resume, given_model: dict, given_train: dict, vocab_path, run_dir: RunDirectory,
                overwrite: bool) -> Start:
    if given_train.get("init") is not None:
        raise CharrnnError(f"{named('init')} starts a new run and {named('resume')} continues one: give one of them")
    ckpt = load_checkpoint(resume)
    if ckpt.optimizer is None or ckpt.state.step is None:
        raise CharrnnError(f"{resume} has no optimiser state, so training cannot resume from it")
    if vocab_path is not None and Vocab.load(vocab_path) != ckpt.vocab:
        raise CharrnnError(f"{named('vocab', vocab_path)} differs from the vocabulary of {resume}")
    try:
        saved = TrainConfig.from_dict(ckpt.train)
    except CharrnnError as e:
        raise CharrnnError(f"{resume}: bad training settings: {e}") from None
    tcfg = resumed_run_settings(saved, ckpt.config, given_model, given_train)
    state = ckpt.state
    state.elapsed = state.elapsed or 0.0
    if not overwrite:
        run_dir.check_last(resume, state.step)
        run_dir.adopt_best(ckpt)
    # With a weight average the file's model is the average, and the weights train on from their own names.
    params, average = (ckpt.raw, ckpt.params) if ckpt.raw is not None else (ckpt.params, None)
    return Start(ckpt.config, tcfg, ckpt.vocab, params, Adam(params, ckpt.optimizer), state, ckpt.carry,
                 state.corpus_sha256, None if ckpt.lines is None else ckpt.lines[1], average)


def fine_tuned_run(init, corpus, given_model: dict, given_train: dict, vocab_path) -> Start:
    """A new run on top of init's weights: its shape (settings given that differ are
    refused), its vocabulary with the corpus's new characters added after the old ones
    (old ids unchanged; new rows initialised small)."""
    if vocab_path is not None:
        raise CharrnnError(f"{named('vocab')} does not apply with {named('init')}: the vocabulary is the "
                           "checkpoint's, grown by the corpus's new characters")
    if "forget_bias" in given_train:
        raise CharrnnError(f"{named('forget_bias')} sets new weights; with {named('init')} they come from {init}")
    ckpt = load_checkpoint(init, with_training_state=False)
    for name, value in given_model.items():
        if getattr(ckpt.config, name) != value:
            raise CharrnnError(f"{named(name, value)} conflicts with {init}'s {name} = {getattr(ckpt.config, name)}: "
                               f"{named('init')} takes the model's shape from it; drop the flag")
    wanted = corpus_vocab(corpus, ckpt.config.lines)
    added = [c for c in wanted.chars if c not in ckpt.vocab]
    vocab = Vocab([*ckpt.vocab.chars, *added])
    _, tcfg = new_run_settings({}, given_train, len(vocab))
    cfg = ModelConfig.from_dict({**ckpt.config.to_dict(), "vocab_size": len(vocab)})
    with memory_for(cfg):
        params = grown(ckpt.params, cfg, np.random.default_rng(tcfg.seed))
        optimizer = Adam(params)
    note = (f"note: added {len(added)} character{'s' if len(added) != 1 else ''} that {init}'s vocabulary lacks: "
            f"{describe_chars(added)}") if added else None
    return Start(cfg, tcfg, vocab, params, optimizer, TrainingState(step=0, elapsed=0.0), note=note)


NEW_BIAS_BELOW = 3.0


def grown(old: Parameters, cfg: ModelConfig, rng: np.random.Generator) -> Parameters:
    """old's weights in cfg's layout, whose vocabulary may be larger: the first rows of
    the embedding, the decoder and its bias are old's; a new character's embedding and
    decoder row start small, and its bias below the smallest old one (a character far
    rarer than any it knows, e**-NEW_BIAS_BELOW times the rarest), so the model's
    predictions for the old text barely change until the new text teaches it."""
    params = Parameters(cfg, np.float32)
    v_old = old.cfg.vocab_size
    with params.write() as w:
        for name, view in w.views.items():
            source = old[name]
            if view.shape == source.shape:
                view[...] = source
                continue
            view[:v_old] = source
            if name == "embedding.weight":
                view[v_old:] = rng.normal(0.0, 0.1, view[v_old:].shape)
            elif name == "decoder.weight":
                bound = 0.1 / math.sqrt(cfg.hidden)
                view[v_old:] = rng.uniform(-bound, bound, view[v_old:].shape)
            else:  # decoder.bias
                view[v_old:] = source.min() - NEW_BIAS_BELOW
    return params
