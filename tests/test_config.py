"""The settings: defined once in charrnn.config, and the command line agrees with them."""

import math

import click
import pytest

from charrnn.cli import cli
from charrnn.config import (ModelConfig, SampleConfig, ServeConfig, TrainConfig, describe_options, format_duration,
                            parse_duration, parse_steps_or_duration, settings_of)
from charrnn.errors import CharrnnError, SettingError, UnknownSettingError, as_flag, named, render

# Each command's settings, and the options it has besides them (files, output format).
COMMAND_SETTINGS = {"train": (ModelConfig, TrainConfig), "sample": (SampleConfig,), "serve": (ServeConfig,)}
OTHER_OPTIONS = {"train": {"out", "vocab", "resume", "overwrite", "quiet"},
                 "sample": {"stream", "as_json"}, "serve": set()}


def options(command: str) -> dict[str, click.Option]:
    return {p.name: p for p in cli.commands[command].params if isinstance(p, click.Option)}


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_every_option_is_a_setting_or_a_listed_other_option(command):
    settings = {name: s for cls in COMMAND_SETTINGS[command] for name, s in settings_of(cls).items() if s.cli}
    opts = options(command)
    assert set(opts) == set(settings) | OTHER_OPTIONS[command]
    for name, s in settings.items():
        opt = opts[name]
        assert opt.opts[-1] == "--" + name.replace("_", "-")
        assert opt.default is None  # so that the library can tell what was given
        if s.kind == "choice":
            assert tuple(opt.type.choices) == s.choices
        shown = s.shown_default()
        assert (f"[default: {shown}]" in opt.help) == (shown is not None)
        assert opt.help.startswith(s.help.split("{")[0])
        if s.short:
            assert s.short in opt.opts


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig, SampleConfig, ServeConfig])
def test_each_default_is_valid_and_a_config_of_defaults_holds_them(cls):
    extra = {"vocab_size": 10} if cls is ModelConfig else {}
    cfg = cls(**extra)
    for name, s in settings_of(cls).items():
        if name not in extra:
            assert getattr(cfg, name) == s.default
            assert s.check(s.default) == s.default


def test_help_names_settings_as_flags_on_the_command_line():
    help_text = CliRunnerHelp("train")
    assert "--min-lr-frac x --lr" in help_text and "{" not in help_text


def CliRunnerHelp(command):
    from click.testing import CliRunner

    return CliRunner().invoke(cli, [command, "-h"]).output


@pytest.mark.parametrize("cls,name,value,message", [
    (TrainConfig, "batch_size", 0, "batch_size must be a positive integer, got 0"),
    (TrainConfig, "lr", math.nan, "lr must be a positive number, got nan"),
    (TrainConfig, "lr_schedule", "exp", "lr_schedule must be one of cosine, linear, constant, got 'exp'"),
    (TrainConfig, "eval_every", "soon", "eval_every must be a positive integer (steps) or a duration"),
    (TrainConfig, "max_time", "5x", "max_time must be a duration such as 90s, 5m or 1h30m, got '5x'"),
    (ModelConfig, "dropout", 1.0, "dropout must be in [0, 1), got 1.0"),
    (SampleConfig, "top_p", 0.0, "top_p must be a number in (0, 1], got 0.0"),
    (SampleConfig, "num_samples", True, "num_samples must be a positive integer, got True"),
])
def test_the_library_names_the_setting_and_the_command_line_the_flag(cls, name, value, message):
    extra = {"vocab_size": 5} if cls is ModelConfig else {}
    with pytest.raises(SettingError) as info:
        cls(**extra, **{name: value})
    assert str(info.value).startswith(message) and info.value.name == name
    flag = "--" + name.replace("_", "-")
    assert render(info.value.message, as_flag).startswith(flag + message[len(name):])


def test_numbers_of_other_types_are_kept_as_python_numbers_that_json_can_write():
    """numpy's int64 and float32 pass the rules (they are numbers), and a config keeps
    them as int and float: checkpoints and the server's answers are JSON."""
    import json

    import numpy as np
    cfg = TrainConfig(seed=np.int64(3), lr=np.float32(0.5), batch_size=np.uint8(4), max_time=np.float64(90))
    assert [type(v) for v in (cfg.seed, cfg.lr, cfg.batch_size, cfg.max_time)] == [int, float, int, float]
    assert (cfg.seed, cfg.lr, cfg.batch_size, cfg.max_time) == (3, 0.5, 4, 90.0)
    json.dumps(cfg.to_dict())
    assert type(ModelConfig(vocab_size=np.int32(5), hidden=np.int64(8)).hidden) is int


def test_durations_given_as_text_are_kept_in_seconds():
    assert TrainConfig(max_time="1h30m").max_time == 5400.0
    assert TrainConfig(eval_every="2m").eval_every == "120s" and TrainConfig(eval_every=50).eval_every == 50
    assert [parse_duration(t) for t in ("90", "90s", "1.5m", ".5h")] == [90.0, 90.0, 90.0, 1800.0]
    assert parse_steps_or_duration("500") == 500 and parse_steps_or_duration("1m") == "60s"
    assert [format_duration(s) for s in (60, 90, 5400, 2.5)] == ["1m", "1m30s", "1h30m", "2.5s"]
    for bad in ("", "5x", "0s", "-1m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_unknown_settings_are_refused_for_model_and_training_alike_with_a_suggestion():
    for cls, d in ((ModelConfig, {"vocab_size": 3, "hiden": 5}), (TrainConfig, {"batchsize": 5})):
        with pytest.raises(UnknownSettingError, match="did you mean"):
            cls.from_dict(d)
        with pytest.raises(UnknownSettingError):
            cls.check_values({k: v for k, v in d.items() if k != "vocab_size"})


def test_a_training_config_saved_before_the_schedule_existed_loads_with_a_constant_rate():
    old = {"batch_size": 50, "seq_len": 50, "lr": 2e-3, "grad_clip": 5.0, "val_frac": 0.1, "eval_every": 500,
           "max_steps": 100, "max_epochs": None, "max_time": None, "seed": 0}
    cfg = TrainConfig.from_dict(old)
    assert (cfg.lr_schedule, cfg.warmup_steps, cfg.min_lr_frac, cfg.forget_bias) == ("constant", 0, 0.0, 0.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_named_references_render_per_front_end():
    e = CharrnnError(f"use {named('batch_size', 17)} with {named('seq_len')}")
    assert str(e) == "use batch_size=17 with seq_len"
    assert render(e.message, as_flag) == "use --batch-size 17 with --seq-len"


def test_a_setting_with_an_environment_variable_reads_it_and_the_flag_wins(monkeypatch):
    assert options("serve")["api_key"].envvar == settings_of(ServeConfig)["api_key"].env == "CHARRNN_API_KEY"
    monkeypatch.delenv("CHARRNN_API_KEY", raising=False)
    assert cli.commands["serve"].make_context("serve", ["ckpt"]).params["api_key"] is None
    monkeypatch.setenv("CHARRNN_API_KEY", "from-env")
    assert cli.commands["serve"].make_context("serve", ["ckpt"]).params["api_key"] == "from-env"
    assert cli.commands["serve"].make_context("serve", ["ckpt", "--api-key", "flag"]).params["api_key"] == "flag"


def test_a_models_options_are_described_in_words_for_old_and_new_checkpoints():
    assert describe_options({"dropout": 0.1}) == "dropout 0.1"  # a checkpoint from before the other options
    new = ModelConfig(vocab_size=5, dropout=0.2, locked_dropout=True, weight_drop=0.1, lines=True).to_dict()
    assert describe_options(new) == "dropout 0.2 (locked), weight drop 0.1, line mode"
    assert describe_options({**new, "dropout": 0.0, "weight_drop": 0.0, "lines": False}) == "dropout 0"  # nothing locked
