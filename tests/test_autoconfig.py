"""Settings chosen from the budget: when, what, and that a given setting turns it off."""

import pytest
from conftest import SHAKESPEARE

from charrnn import autoconfig, isa, runstart, speed
from charrnn.checkpoint import load_checkpoint
from charrnn.config import ModelConfig, TrainConfig
from charrnn.errors import CharrnnError
from charrnn.model import parameter_count
from charrnn.training import Trainer


def fake_speed(calls):
    """chars/s falling with the model's size, as on a real machine; records each call."""
    def speed_of(cfg, batch, seq_len):
        calls.append((cfg.layers, cfg.hidden))
        return 4e9 / (cfg.layers * cfg.hidden * (cfg.hidden + 64))
    return speed_of


def test_the_largest_model_that_still_sees_the_text_often_enough_is_chosen():
    calls = []
    short = autoconfig.choose(1_000_000, 65, TrainConfig(max_time=60.0), fake_speed(calls))
    long = autoconfig.choose(1_000_000, 65, TrainConfig(max_time=3600.0), fake_speed([]))
    assert (short.model["hidden"], short.model["layers"]) < (long.model["hidden"], long.model["layers"])
    for choice, budget in ((short, 60.0), (long, 3600.0)):
        layers, hidden = choice.model["layers"], choice.model["hidden"]
        epochs = 4e9 / (layers * hidden * (hidden + 64)) * budget * autoconfig.EVAL_SHARE / 1e6
        assert epochs >= autoconfig.MIN_EPOCHS or (layers, hidden) == autoconfig.CANDIDATES[0]
        params = parameter_count(ModelConfig(vocab_size=65, layers=layers, hidden=hidden, embed=autoconfig.EMBED))
        assert choice.model["dropout"] == autoconfig.dropout_for(epochs, params, 1_000_000)
        assert choice.model["weight_drop"] == autoconfig.weight_drop_for(epochs, params, 1_000_000)
        assert choice.train["lr"] == autoconfig.lr_for(layers, hidden) and choice.train["ema"] == 0.0
        steps = epochs * 1e6 / (32 * 50)
        assert choice.train["weight_decay"] == autoconfig.weight_decay_for(choice.model["dropout"], choice.train["lr"],
                                                                           steps)
    assert calls == [c for c in autoconfig.CANDIDATES[:len(calls)]]  # stops at the first that is too slow
    assert long.model["dropout"] > short.model["dropout"] >= 0  # a larger model, more dropout


def test_weight_decay_comes_with_dropout_and_shrinks_a_run_by_the_same_amount():
    assert autoconfig.weight_decay_for(0.0, 4e-3, 3700) == 0.0
    assert autoconfig.weight_decay_for(0.1, 4e-3, 3700) == 0.1  # 1x512 at 5 minutes
    assert autoconfig.weight_decay_for(0.1, 4e-3, 3700) == autoconfig.weight_decay_for(0.3, 4e-3, 3700)
    longer = autoconfig.weight_decay_for(0.1, 4e-3, 4 * 3700)
    assert longer == pytest.approx(0.1 / 4, rel=0.05)  # four times the steps, a quarter of the decay
    assert 0 < autoconfig.weight_decay_for(0.1, 4e-3, 1) * 4e-3 < 1  # a step never shrinks a weight to nothing


def test_dropout_grows_with_passes_times_parameters_per_character():
    assert autoconfig.dropout_for(3.5, 350_000, 1_000_000) == 0.0  # a small model, few passes
    assert autoconfig.dropout_for(2.0, 1_000_000, 1_000_000) == 0.05
    assert autoconfig.dropout_for(6.0, 1_200_000, 1_000_000) == 0.1  # 1x512 at 5 minutes
    assert autoconfig.dropout_for(4.4, 5_400_000, 1_000_000) == 0.1  # the plateau's end, x = 24
    assert autoconfig.dropout_for(4.8, 5_400_000, 1_000_000) == 0.12  # 3x512 at 20 minutes on Zen 4
    assert autoconfig.dropout_for(9.0, 5_400_000, 1_000_000) == 0.25  # 3x512 at 20 minutes on Zen 5
    assert autoconfig.dropout_for(4.7, 12_070_000, 1_000_000) == 0.25  # 3x768 at 20 minutes on Zen 5 (x = 57)
    assert autoconfig.dropout_for(3.7, 12_070_000, 1_000_000) == 0.23  # x = 45, below the cap
    assert autoconfig.dropout_for(1000.0, 5_400_000, 10_000) == autoconfig.DROPOUT_MAX == 0.25  # capped
    steps = [autoconfig.dropout_for(e, 1_000_000, 1_000_000) for e in (1, 2, 4, 8, 32, 64, 128)]
    assert steps == sorted(steps)


def test_weight_drop_begins_where_dropout_stopped_paying():
    assert autoconfig.weight_drop_for(6.0, 1_200_000, 1_000_000) == 0.0  # 1x512 at 5 minutes
    assert autoconfig.weight_drop_for(4.4, 5_400_000, 1_000_000) == 0.0  # x = 24, the plateau's end
    assert autoconfig.weight_drop_for(3.6, 5_400_000, 1_000_000) == 0.0  # 3x512 at 20 minutes, float32
    assert autoconfig.weight_drop_for(6.8, 5_400_000, 1_000_000) == 0.2  # the same in bf16 (x = 37): measured
    assert autoconfig.weight_drop_for(1000.0, 5_400_000, 10_000) == autoconfig.WEIGHT_DROP_MAX
    steps = [autoconfig.weight_drop_for(e, 5_400_000, 1_000_000) for e in (4, 5, 5.5, 6, 8, 16)]
    assert steps == sorted(steps) and 0 < steps[2] < 0.2


def test_the_learning_rate_falls_as_the_layer_widens():
    rates = [autoconfig.lr_for(1, h) for h in (128, 256, 512, 1024)]
    assert rates == sorted(rates, reverse=True) and autoconfig.lr_for(1, 512) == 4e-3
    assert autoconfig.lr_for(2, 512) < autoconfig.lr_for(1, 512)


def test_a_budget_in_steps_or_epochs_never_asks_for_the_speed():
    choice = autoconfig.choose(1_000_000, 65, TrainConfig(max_steps=5000), None)
    assert "5,000 steps on 1.0 M characters ≈ 8.0 epochs" in choice.reason
    assert autoconfig.choose(1_000_000, 65, TrainConfig(max_epochs=8.0), None).model == choice.model


def test_the_reason_names_the_choice_and_the_budget():
    choice = autoconfig.choose(1_003_855, 65, TrainConfig(max_time=300.0), fake_speed([]))
    m, t = choice.model, choice.train
    regularisers = f", weight decay {t['weight_decay']:g}" if t["weight_decay"] else ""
    regularisers += f", weight drop {m['weight_drop']:g}" if m["weight_drop"] else ""
    assert choice.reason.startswith(f"{m['layers']}×{m['hidden']}, dropout {m['dropout']:g}{regularisers}, B=32, "
                                    f"lr {t['lr']:g}")
    assert ": 5m on 1.0 M characters at ≈ " in choice.reason and choice.reason.endswith(" epochs")


def test_the_time_left_to_training_is_what_validation_leaves():
    budget = TrainConfig(max_time=300.0)  # eval_every 60s: validations at 1, 2, 3 and 4 minutes, the 5th after
    assert autoconfig.training_share(budget, 900_000, 100_000.0) == pytest.approx(1 - 4 * 1.0 / 300)
    assert autoconfig.training_share(TrainConfig(max_time=60.0), 900_000, 1.0) == 1.0  # only the one at the end
    assert autoconfig.training_share(TrainConfig(max_time=90.0), 900_000, 100_000.0) == pytest.approx(1 - 1 / 90)
    assert autoconfig.training_share(budget, 900_000, 1.0) == 0.05  # validation would take it all
    assert autoconfig.training_share(budget, 900_000, None) == autoconfig.EVAL_SHARE
    assert autoconfig.training_share(budget.replace(eval_every=500), 900_000, 1e5) == autoconfig.EVAL_SHARE
    assert autoconfig.training_share(budget.replace(val_frac=0.0), 900_000, 1.0) == 1.0


def test_a_model_whose_validation_would_eat_the_budget_is_not_chosen():
    budget = TrainConfig(max_time=1200.0)
    plain = autoconfig.choose(1_000_000, 65, budget, fake_speed([]))
    fast = autoconfig.choose(1_000_000, 65, budget, fake_speed([]), lambda cfg, b, t: 1e9)
    slow = autoconfig.choose(1_000_000, 65, budget, fake_speed([]), lambda cfg, b, t: fake_speed([])(cfg, b, t) / 2)
    size = lambda c: (c.model["layers"], c.model["hidden"])  # noqa: E731
    assert size(fast) >= size(plain) > size(slow)
    assert "bfloat16" not in plain.reason


def test_a_time_budget_alone_trains_in_bfloat16_where_the_cpu_can():
    assert autoconfig.precision_for(TrainConfig(max_time=300.0), True) == "bf16"
    assert autoconfig.precision_for(TrainConfig(max_time=300.0), False) == "float32"
    assert autoconfig.precision_for(TrainConfig(max_time=300.0, max_steps=100), True) == "float32"
    assert autoconfig.precision_for(TrainConfig(max_epochs=2.0), True) == "float32"
    choice = autoconfig.choose(1_003_855, 65, TrainConfig(max_time=300.0, precision="bf16"), fake_speed([]))
    assert choice.train["precision"] == "bf16" and ", bfloat16 products: 5m on " in choice.reason
    assert "bfloat16" not in autoconfig.choose(1_003_855, 65, TrainConfig(max_time=300.0), fake_speed([])).reason


@pytest.mark.parametrize("amx, model, train, precision, chosen", [
    (True, {}, {}, "bf16", True),
    (False, {}, {}, "float32", True),  # no AMX tiles (or Linux refuses them)
    (True, {}, {"precision": "float32"}, "float32", True),  # a given precision is kept, the rest still chosen
    (True, {}, {"max_steps": 3}, "float32", True),  # a budget in steps trains alike everywhere
    (True, {"hidden": 64}, {}, "float32", False),  # given settings: the fixed default
])
def test_a_new_run_chooses_its_precision_with_its_other_settings(corpus, monkeypatch, amx, model, train, precision,
                                                                 chosen):
    def enable_bf16():
        if not amx:
            raise CharrnnError("precision bf16 is not available here")

    asked = []

    def chars_per_second(cfg, batch, seq_len, precision="float32"):
        asked.append(precision)
        return fake_speed([])(cfg, batch, seq_len), False

    monkeypatch.setattr(isa, "enable_bf16", enable_bf16)
    monkeypatch.setattr(speed, "chars_per_second", chars_per_second)
    monkeypatch.setattr(speed, "validation_chars_per_second", lambda cfg, batch, seq_len: (1e6, False))
    start = runstart.new_run(corpus, model, {"max_time": 1.0, **train}, None)
    assert start.tcfg.precision == precision and bool(start.state.chosen) == chosen
    assert set(asked) <= {precision}  # the speeds it chose by were measured at the precision it trains at
    if chosen:
        assert ("bfloat16 products" in start.state.chosen) == (precision == "bf16")


@pytest.mark.parametrize("given", [{"hidden": 256}, {"lr": 4e-3}, {"dropout": 0.0}, {"ema": 0.0}, {"seq_len": 50},
                                   {"weight_decay": 0.0}])
def test_any_given_setting_turns_the_choice_off(given):
    model = {k: v for k, v in given.items() if k in ("hidden", "dropout")}
    train = {k: v for k, v in given.items() if k not in model}
    assert not autoconfig.wanted(model, train)
    assert autoconfig.wanted({}, {"max_time": 60.0, "seed": 3})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("auto") / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text()[:20000])
    return path


def test_a_new_run_without_settings_records_its_choice_and_a_given_one_trains_as_before(corpus, tmp_path):
    chosen = Trainer(corpus, tmp_path / "chosen", {}, {"max_steps": 3}, progress=False)
    assert chosen.state.chosen and chosen.cfg.hidden != 0
    chosen.run()
    assert load_checkpoint(tmp_path / "chosen" / "last.safetensors").state.chosen == chosen.state.chosen
    defaults = dict(cell="lstm", layers=2, hidden=256, embed=64, dropout=0.0)
    explicit = dict(batch_size=32, seq_len=50, lr=4e-3, ema=0.0, max_steps=3)
    Trainer(corpus, tmp_path / "one", {"cell": "lstm"}, {"max_steps": 3}, progress=False).run()
    Trainer(corpus, tmp_path / "all", defaults, explicit, progress=False).run()
    one = load_checkpoint(tmp_path / "one" / "last.safetensors")
    assert one.state.chosen is None and (one.config.layers, one.config.hidden) == (2, 256)
    assert (tmp_path / "one" / "last.safetensors").read_bytes() == (tmp_path / "all" / "last.safetensors").read_bytes()


def test_a_line_mode_step_counts_its_lines_and_seq_len_holds_the_longest():
    """A step of line mode learns from B lines (8 characters each here), not B x 50: the
    steps a budget gives, and so the decay that adds up over them, count lines; and the
    longest line (with its end) must fit in seq_len."""
    budget = TrainConfig(max_steps=2000)
    streams = autoconfig.choose(200_000, 40, budget)
    lines = autoconfig.choose(200_000, 40, budget, line_chars=8.0, longest_line=71)
    assert streams.train["seq_len"] == 50 and lines.train["seq_len"] == 71
    assert autoconfig.choose(200_000, 40, budget, line_chars=8.0, longest_line=12).train["seq_len"] == 50
    passes = 2000 * 32 * 8.0 / 200_000
    params = parameter_count(ModelConfig(vocab_size=40, layers=lines.model["layers"], hidden=lines.model["hidden"],
                                         embed=autoconfig.EMBED))
    assert lines.model["dropout"] == autoconfig.dropout_for(passes, params, 200_000)
    assert lines.train["weight_decay"] == autoconfig.weight_decay_for(lines.model["dropout"], lines.train["lr"], 2000)
    assert f"≈ {passes:.1f} epochs" in lines.reason


def test_a_line_mode_run_chooses_from_its_lines(tmp_path):
    names = [f"name{'x' * (i % 60)}" for i in range(400)]
    (tmp_path / "names.txt").write_text("\r\n".join(names) + "\r\n")
    trainer = Trainer(tmp_path / "names.txt", tmp_path / "run", {"lines": True}, {"max_steps": 2}, progress=False)
    assert trainer.tcfg.seq_len == 64 and trainer.state.chosen  # the longest line ("name" and 59 x) and its end
    n_chars = int(sum(len(n) + 1 for n in names) * 0.9)
    assert f"on {n_chars:,} characters" in trainer.state.chosen
    trainer.run()
