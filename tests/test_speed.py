"""The speed cache a time budget plans with: measured over time, blended, keyed."""

import json

import pytest

from charrnn import speed
from charrnn.config import ModelConfig

CFG = ModelConfig(vocab_size=11, layers=1, hidden=8, embed=4)


def test_a_measurement_times_at_least_the_minimum_steps_and_seconds(monkeypatch):
    monkeypatch.setattr(speed, "MIN_SECONDS", 0.05)
    steps = []
    real = speed.Adam.step
    monkeypatch.setattr(speed.Adam, "step", lambda self, *a: (steps.append(1), real(self, *a))[1])
    chars_per_sec = speed.measure(CFG, 2, 3)
    assert len(steps) >= speed.WARM_STEPS + speed.MIN_TIMED_STEPS
    assert 0 < chars_per_sec < 2 * 3 * (len(steps) - speed.WARM_STEPS) / 0.05 * 1.01


def test_a_measurement_trains_with_dropout_and_weight_drop_as_a_chosen_plan_does(monkeypatch):
    monkeypatch.setattr(speed, "MIN_SECONDS", 0.01)
    seen = []
    real = speed.Network.loss_and_grad
    monkeypatch.setattr(speed.Network, "loss_and_grad", lambda self, *a, **k: (
        seen.append((self.cfg.dropout, self.cfg.weight_drop, k["dropout_key"])), real(self, *a, **k))[1])
    speed.measure(CFG, 2, 3)
    assert {(d, w) for d, w, _ in seen} == {(speed.PROBE_DROPOUT, speed.PROBE_WEIGHT_DROP)}
    assert all(key is not None for _, _, key in seen)  # a training pass: the masks are drawn
    seen.clear()
    speed.measure(ModelConfig(vocab_size=11, layers=1, hidden=8, embed=4, dropout=0.3), 2, 3)
    assert {d for d, _, _ in seen} == {0.3}  # a shape's own dropout is kept


def test_the_cache_moves_halfway_to_each_new_measurement_instead_of_keeping_the_fastest():
    assert not speed.known(CFG, 2, 3)
    speed.remember(CFG, 2, 3, 1000.0)
    assert speed.chars_per_second(CFG, 2, 3) == (1000.0, False)
    speed.remember(CFG, 2, 3, 600.0)
    assert speed.chars_per_second(CFG, 2, 3)[0] == pytest.approx(1000.0 * speed.KEEP + 600.0 * (1 - speed.KEEP))
    assert not speed.known(ModelConfig(vocab_size=11, layers=1, hidden=16, embed=4), 2, 3)  # another shape
    assert not speed.known(CFG, 4, 3)  # another batch
    assert not speed.known(CFG, 2, 3, "bf16")  # another precision
    speed.remember(CFG, 2, 3, 5000.0, "bf16")
    assert speed.chars_per_second(CFG, 2, 3, "bf16") == (5000.0, False)
    assert speed.key(CFG, 2, 3) == speed.key(CFG, 2, 3, "float32")  # float32 keys are as before precision existed


def test_an_unknown_shape_is_measured_once_then_remembered(monkeypatch):
    monkeypatch.setattr(speed, "measure", lambda cfg, batch, seq_len, precision: 1234.5)
    assert speed.chars_per_second(CFG, 2, 3) == (1234.5, True)
    monkeypatch.setattr(speed, "measure", lambda *args: pytest.fail("measured twice"))
    assert speed.chars_per_second(CFG, 2, 3) == (1234.5, False)


def test_validation_is_measured_as_training_validates_and_remembered_under_its_own_key(monkeypatch):
    monkeypatch.setattr(speed, "MIN_SECONDS", 0.05)
    calls = []
    real = speed.Network.loss_sum
    monkeypatch.setattr(speed.Network, "loss_sum", lambda self, x, y, state: (calls.append(x.shape), real(self, x, y,
                                                                                                       state))[1])
    chars_per_sec, measured = speed.validation_chars_per_second(CFG, 2, 3)
    assert measured and chars_per_sec > 0 and set(calls) == {(3, 2)}  # seq_len x streams, as training validates
    assert len(calls) >= 1 + speed.MIN_TIMED_STEPS
    assert speed.validation_chars_per_second(CFG, 2, 3) == (round(chars_per_sec, 1), False)
    assert not speed.known(CFG, 2, 3)  # training's speed is another entry
    assert speed.key(CFG, 2, 3, what="validation") == speed.key(CFG, 2, 3) + "|validation"


def test_an_unreadable_cache_counts_as_empty():
    speed.cache_path().parent.mkdir(parents=True, exist_ok=True)
    speed.cache_path().write_text("not json")
    assert not speed.known(CFG, 2, 3)
    speed.remember(CFG, 2, 3, 10.0)
    assert speed.known(CFG, 2, 3)


def test_a_cache_nested_too_deep_or_holding_numbers_no_speed_can_be_counts_as_empty():
    speed.cache_path().parent.mkdir(parents=True, exist_ok=True)
    speed.cache_path().write_text("[" * 100_000 + "]" * 100_000)
    assert not speed.known(CFG, 2, 3)
    k = speed.key(CFG, 2, 3, "float32")
    for bad in ("1" + "0" * 400, "1e999", "NaN", "-5", "true"):
        speed.cache_path().write_text(f"{{{json.dumps(k)}: {bad}}}")
        assert not speed.known(CFG, 2, 3), bad
    speed.remember(CFG, 2, 3, 10.0)
    assert speed.known(CFG, 2, 3)
