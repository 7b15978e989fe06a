import json
import os
import signal

import numpy as np
import pytest
from conftest import SHAKESPEARE, ctrl_c_in, raises_as_cli

from charrnn.checkpoint import load_checkpoint
from charrnn.errors import CharrnnError
from charrnn.schedule import lr_factor
from charrnn.training import Trainer

TINY_MODEL = dict(cell="lstm", layers=2, hidden=16, embed=8, dropout=0.2, weight_drop=0.2)
TINY_TRAIN = dict(batch_size=4, seq_len=16, eval_every=10, seed=3, warmup_steps=10)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(SHAKESPEARE.read_text()[:8000])
    return path


def run(corpus, out, steps, resume=None, **train):
    flags = dict(TINY_TRAIN, max_steps=steps, **train)
    trainer = Trainer(corpus, out, dict(TINY_MODEL) if resume is None else {}, flags,
                      resume=resume, progress=False)
    return trainer.run()


def test_training_lowers_the_loss_and_writes_checkpoints_and_metrics(corpus, tmp_path):
    summary = run(corpus, tmp_path, 60)
    assert summary["step"] == 60
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    best = load_checkpoint(tmp_path / "best.safetensors")
    assert best.state.best_val_loss == min(r["val_loss"] for r in rows)
    last = load_checkpoint(tmp_path / "last.safetensors")
    assert last.state.step == 60 and last.optimizer is not None and last.carry is not None


def run_stopped(corpus, out, steps, stop, **train):
    """The run of `steps` steps, stopped by Ctrl-C during step `stop`. Its learning
    rate follows the budget of `steps`, so this (not a run of `stop` steps) is the
    first part of the uninterrupted run."""
    trainer = Trainer(corpus, out, dict(TINY_MODEL), dict(TINY_TRAIN, max_steps=steps, **train), progress=False)
    interrupt_during_step(trainer, stop)
    summary = trainer.run()
    assert summary["interrupted"] and summary["step"] == stop
    return summary


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(corpus, tmp_path, schedule):
    run(corpus, tmp_path / "whole", 40, lr_schedule=schedule)
    if schedule == "constant":  # the rate does not depend on the budget: a run of 20 steps, continued to 40
        run(corpus, tmp_path / "split", 20, lr_schedule=schedule)
    else:  # warm-up then a decay over 40 steps: the 40-step run stopped at step 20
        run_stopped(corpus, tmp_path / "split", 40, 20, lr_schedule=schedule)
    run(corpus, tmp_path / "split", 40, resume=tmp_path / "split" / "last.safetensors")
    whole = (tmp_path / "whole" / "last.safetensors").read_bytes()
    split = (tmp_path / "split" / "last.safetensors").read_bytes()
    assert whole == split
    rows = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [10, 20, 30, 40]


def test_refuses_to_overwrite_an_existing_run(corpus, tmp_path):
    run(corpus, tmp_path, 10)
    with pytest.raises(CharrnnError, match="already holds a run"):
        run(corpus, tmp_path, 10)


def test_resume_refuses_conflicting_model_flags(corpus, tmp_path):
    run(corpus, tmp_path, 10)
    with raises_as_cli("--hidden 32 conflicts"):
        Trainer(corpus, tmp_path, {"hidden": 32}, {"max_steps": 20}, resume=tmp_path / "last.safetensors",
                progress=False)


def test_max_epochs_counts_passes_over_the_text(corpus, tmp_path):
    trainer = Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_epochs=0.5), progress=False)
    summary = trainer.run()
    assert summary["step"] == int(np.ceil(0.5 * trainer.data.steps_per_epoch))


def files_of(out):
    return {p.name: p.read_bytes() for p in out.iterdir()}


def interrupt_during_step(trainer, step):
    """Send this process a real SIGINT while the trainer computes step `step`."""
    original = trainer.train_step

    def train_step(state, elapsed):
        if trainer.step + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(state, elapsed)

    trainer.train_step = train_step


def test_ctrl_c_saves_last_without_validating_and_resumes_exactly(corpus, tmp_path):
    run(corpus, tmp_path / "whole", 40)
    out = tmp_path / "split"
    run_stopped(corpus, out, 40, 20)
    before = files_of(out)
    trainer = Trainer(corpus, out, {}, dict(TINY_TRAIN, max_steps=40), resume=out / "last.safetensors",
                      progress=False)
    trainer.validate = lambda: pytest.fail("Ctrl-C must not run the validation")
    interrupt_during_step(trainer, 25)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # default, or SIG_IGN
    summary = trainer.run()
    assert summary["interrupted"] and summary["trained"] and summary["step"] == 25
    assert summary["signal"] == signal.SIGINT
    for s, handler in handlers.items():  # the handlers from before the run, restored
        assert signal.getsignal(s) is handler
    after = files_of(out)
    assert after["best.safetensors"] == before["best.safetensors"]
    assert after["metrics.jsonl"] == before["metrics.jsonl"]
    last = load_checkpoint(out / "last.safetensors")
    assert last.state.step == 25 and last.state.val_loss is None
    run(corpus, out, 40, resume=out / "last.safetensors")
    assert (out / "last.safetensors").read_bytes() == (tmp_path / "whole" / "last.safetensors").read_bytes()
    assert (out / "best.safetensors").read_bytes() == (tmp_path / "whole" / "best.safetensors").read_bytes()


def test_ctrl_c_before_the_first_step_writes_nothing(corpus, tmp_path):
    trainer = Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_steps=40), progress=False)
    trainer.interrupted = True  # as if Ctrl-C came during start-up
    summary = trainer.run()
    assert summary["interrupted"] and not summary["trained"]
    assert list(tmp_path.iterdir()) == []


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("steps", [40, 20])  # 20: the resumed run's one evaluation is step 20's again
def test_a_kill_between_two_writes_resumes_to_the_same_files(corpus, tmp_path, monkeypatch, steps):
    import charrnn.rundir as rundir

    run(corpus, tmp_path / "whole", steps)
    out = tmp_path / "killed"
    real_save = rundir.save_checkpoint

    def save_then_die_before_last(path, ckpt):
        if path.name == "last.safetensors" and ckpt.state.step == 20:
            raise Killed  # metrics.jsonl and best.safetensors of step 20 are written, last is of step 10
        real_save(path, ckpt)

    monkeypatch.setattr(rundir, "save_checkpoint", save_then_die_before_last)
    with pytest.raises(Killed):
        run(corpus, out, steps)
    monkeypatch.setattr(rundir, "save_checkpoint", real_save)
    assert load_checkpoint(out / "last.safetensors").state.step == 10
    assert load_checkpoint(out / "best.safetensors").state.step == 20
    run(corpus, out, steps, resume=out / "last.safetensors")
    for name in ("last.safetensors", "best.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    rows = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(10, steps + 1, 10))


def test_a_best_checkpoint_left_by_another_run_is_not_adopted_on_resume(corpus, tmp_path, monkeypatch):
    """--overwrite on another corpus, stopped before its first evaluation, then resumed:
    the other run's best.safetensors (a far lower loss, on its own text) is not this
    run's best, so the first evaluation writes this run's."""
    other = tmp_path / "other.txt"
    other.write_text("ab" * 3000)
    run(other, tmp_path / "run", 20, eval_every=10)
    with monkeypatch.context() as m:
        ctrl_c_in(m, "train_step", lambda t: t.step == 2)  # in step 3 (train_step runs before step counts it)
        Trainer(corpus, tmp_path / "run", dict(TINY_MODEL), dict(TINY_TRAIN, max_steps=20), overwrite=True,
                progress=False).run()
    last = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert last.state.step == 3 and load_checkpoint(tmp_path / "run" / "best.safetensors").state.step == 20
    run(corpus, tmp_path / "run", 20, resume=tmp_path / "run" / "last.safetensors")
    best = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert best.state.corpus_sha256 == last.state.corpus_sha256 and best.state.step in (10, 20)


def test_resume_takes_a_run_directory_for_its_last_checkpoint(corpus, tmp_path):
    run(corpus, tmp_path / "a", 10)
    run(corpus, tmp_path / "b", 10)
    run(corpus, tmp_path / "a", 20, resume=tmp_path / "a")
    run(corpus, tmp_path / "b", 20, resume=tmp_path / "b" / "last.safetensors")
    assert (tmp_path / "a" / "last.safetensors").read_bytes() == (tmp_path / "b" / "last.safetensors").read_bytes()
    with raises_as_cli("--resume .*empty is a directory without last.safetensors"):
        (tmp_path / "empty").mkdir()
        run(corpus, tmp_path / "c", 20, resume=tmp_path / "empty")


def test_a_new_budget_on_resume_replaces_the_saved_one(corpus, tmp_path):
    first = Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_epochs=0.1), progress=False).run()
    # The saved --max-epochs is spent; a --max-steps given now is the budget, not an extra limit.
    summary = run(corpus, tmp_path, first["step"] + 5, resume=tmp_path / "last.safetensors")
    assert summary["step"] == first["step"] + 5


def test_resuming_a_finished_run_says_what_to_do(corpus, tmp_path):
    run(corpus, tmp_path, 10)
    trainer = Trainer(corpus, tmp_path, {}, {"max_steps": 10}, resume=tmp_path / "last.safetensors", progress=False)
    with raises_as_cli("nothing to do: .* step 10, which already meets --max-steps 10; "
                                           "give a larger --max-steps"):
        trainer.run()


def test_resume_never_replaces_another_run_or_a_newer_checkpoint_unasked(corpus, tmp_path):
    run(corpus, tmp_path / "a", 10)
    run(corpus, tmp_path / "b", 20)
    with pytest.raises(CharrnnError, match="already holds another run"):
        run(corpus, tmp_path / "b", 30, resume=tmp_path / "a" / "last.safetensors")
    older = tmp_path / "b" / "older.safetensors"
    older.write_bytes((tmp_path / "a" / "last.safetensors").read_bytes())
    with pytest.raises(CharrnnError, match=r"last.safetensors is at step 20, ahead of .*older.safetensors \(step 10\)"):
        run(corpus, tmp_path / "b", 30, resume=older)
    flags = dict(TINY_TRAIN, max_steps=30)
    assert Trainer(corpus, tmp_path / "b", {}, flags, resume=older, overwrite=True, progress=False).run()["step"] == 30


def test_resume_with_characters_outside_the_checkpoints_vocabulary(corpus, tmp_path):
    run(corpus, tmp_path, 10)
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text() + "naïve ☃")
    with pytest.raises(CharrnnError, match=r"not in the vocabulary of .*last.safetensors: 'ï' \(U\+00EF\), "
                                           r"'☃' \(U\+2603\); a resumed model cannot learn new characters"):
        Trainer(other, tmp_path, {}, {"max_steps": 20}, resume=tmp_path / "last.safetensors", progress=False)


def test_resume_refuses_a_different_data_setting(corpus, tmp_path):
    run(corpus, tmp_path, 10)
    with raises_as_cli("--seq-len 8 conflicts with the checkpoint's 16"):
        Trainer(corpus, tmp_path, {}, {"max_steps": 20, "seq_len": 8}, resume=tmp_path / "last.safetensors",
                progress=False)


def test_divergence_stops_with_a_hint_and_leaves_every_file_untouched(corpus, tmp_path):
    run(corpus, tmp_path, 20)
    before = files_of(tmp_path)
    with raises_as_cli(r"diverged at step 2\d: the (training loss|gradient norm) is not finite; "
                                           r"try a lower --lr \(this run used 1e\+38\)"):
        run(corpus, tmp_path, 40, resume=tmp_path / "last.safetensors", lr=1e38)
    assert files_of(tmp_path) == before


def test_a_non_finite_validation_loss_is_divergence_too(corpus, tmp_path, monkeypatch):
    run(corpus, tmp_path, 10)
    before = files_of(tmp_path)
    monkeypatch.setattr(Trainer, "validate", lambda self: float("nan"))
    with raises_as_cli("diverged at step 20: the validation loss is not finite; try a lower --lr"):
        run(corpus, tmp_path, 20, resume=tmp_path / "last.safetensors")
    assert files_of(tmp_path) == before


def test_best_is_only_replaced_by_a_lower_loss_also_across_resumes(corpus, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    for name in ("kept", "control"):
        run(corpus, tmp_path / name, 20)
    best = tmp_path / "kept" / "best.safetensors"
    with safe_open(best, "np") as f:  # a best from an earlier, better phase of the run
        meta = json.loads(f.metadata()["charrnn"])
    meta["state"].update(val_loss=0.5, best_val_loss=0.5, best_step=7)
    save_file(load_file(best), best, metadata={"charrnn": json.dumps(meta)})
    before = best.read_bytes()
    control_before = (tmp_path / "control" / "best.safetensors").read_bytes()
    for name in ("kept", "control"):
        run(corpus, tmp_path / name, 40, resume=tmp_path / name / "last.safetensors")
    assert best.read_bytes() == before
    assert (tmp_path / "control" / "best.safetensors").read_bytes() != control_before  # the loss did fall
    last = load_checkpoint(tmp_path / "kept" / "last.safetensors")
    assert last.state.best_val_loss == 0.5 and last.state.best_step == 7


def test_stale_temporary_files_are_cleared_and_do_not_stop_a_run(corpus, tmp_path):
    run(corpus, tmp_path, 10)
    stale = tmp_path / ".last.safetensors.x8Yz.tmp"
    stale.write_bytes(b"half a checkpoint")
    run(corpus, tmp_path, 20, resume=tmp_path / "last.safetensors")
    assert not stale.exists()


def test_metrics_hold_only_valid_json(corpus, tmp_path):
    Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_steps=0), progress=False).run()
    row = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=pytest.fail)
    assert row["step"] == 0 and row["train_loss"] is None


# ----- the learning-rate schedule -------------------------------------------------

def test_warm_up_rises_linearly_to_the_full_rate():
    assert [lr_factor("constant", 0.0, k, 4, 0.0) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor("constant", 0.5, 0, 0, 0.0) == 1.0  # no warm-up


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_runs_from_the_full_rate_to_the_floor(schedule):
    assert lr_factor(schedule, 0.0, 100, 10, 0.0) == 1.0
    assert lr_factor(schedule, 1.0, 100, 10, 0.0) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(schedule, 1.0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(schedule, 0.5, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(schedule, 0.5, 100, 10, 0.2) == pytest.approx(0.6)
    assert lr_factor(schedule, 2.0, 100, 10, 0.1) == pytest.approx(0.1)  # an overrun stays at the floor
    values = [lr_factor(schedule, p / 10, 100, 10, 0.0) for p in range(11)]
    assert values == sorted(values, reverse=True)


def test_cosine_and_linear_differ_between_the_ends_and_warm_up_multiplies_the_decay():
    assert lr_factor("cosine", 0.25, 100, 10, 0.0) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))
    assert lr_factor("linear", 0.25, 100, 10, 0.0) == pytest.approx(0.75)
    assert lr_factor("linear", 0.25, 4, 10, 0.0) == pytest.approx(0.5 * 0.75)
    assert lr_factor("constant", 0.9, 100, 10, 0.5) == 1.0  # constant ignores the floor


def schedule_trainer(corpus, tmp_path, **flags):
    return Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, lr=0.01, warmup_steps=0, **flags), progress=False)


def test_the_budget_spent_is_the_largest_fraction_of_the_budgets_given(corpus, tmp_path):
    t = schedule_trainer(corpus, tmp_path, max_steps=100)
    t.state.step = 25
    assert t.budget.spent(t.step, 1e6) == 0.25  # elapsed time is no budget here
    assert t.lr(0.0) == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi / 4)))
    t = schedule_trainer(corpus, tmp_path, max_epochs=2.0)
    t.state.step = t.data.steps_per_epoch
    assert t.budget.spent(t.step, 0.0) == 0.5
    t = schedule_trainer(corpus, tmp_path, max_time=60.0)
    assert t.budget.spent(t.step, 15.0) == 0.25 and t.budget.spent(t.step, 90.0) == 1.0
    assert t.lr(60.0) == pytest.approx(0.0, abs=1e-15)
    t = schedule_trainer(corpus, tmp_path, max_steps=100, max_epochs=1.0, max_time=60.0, lr_schedule="linear")
    t.state.step = 10
    spe = t.data.steps_per_epoch
    assert t.budget.spent(t.step, 3.0) == pytest.approx(max(0.1, 10 / spe, 0.05))
    assert t.budget.spent(t.step, 45.0) == 0.75
    assert t.lr(45.0) == pytest.approx(0.01 * 0.25)
    t = schedule_trainer(corpus, tmp_path, max_steps=100, lr_schedule="constant")
    t.state.step = 99
    assert t.lr(0.0) == 0.01


def test_the_rate_of_every_evaluation_is_logged(corpus, tmp_path):
    run(corpus, tmp_path, 40, lr=0.01, warmup_steps=0, min_lr_frac=0.1, lr_schedule="linear")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # the rate of the next step: at step 10 of 40, 0.1 + 0.9 * 0.75 of --lr; at the end, the floor
    assert [r["lr"] for r in rows] == pytest.approx([0.01 * (0.1 + 0.9 * (1 - s / 40)) for s in (10, 20, 30, 40)])


def test_a_checkpoint_from_before_the_schedule_resumes_at_a_constant_rate(corpus, tmp_path):
    from test_checkpoint import rewrite_checkpoint

    run(corpus, tmp_path, 10)
    def strip(meta):
        for key in ("lr_schedule", "warmup_steps", "min_lr_frac"):
            del meta["train"][key]
    rewrite_checkpoint(tmp_path / "last.safetensors", tmp_path / "last.safetensors", edit_meta=strip)
    trainer = Trainer(corpus, tmp_path, {}, {"max_steps": 20}, resume=tmp_path / "last.safetensors", progress=False)
    assert trainer.tcfg.lr_schedule == "constant" and trainer.tcfg.warmup_steps == 0
    assert trainer.lr(0.0) == trainer.tcfg.lr


def test_schedule_flags_are_saved_and_may_change_on_resume(corpus, tmp_path):
    run(corpus, tmp_path, 10, lr_schedule="linear", min_lr_frac=0.25)
    train = load_checkpoint(tmp_path / "last.safetensors").train
    assert (train["lr_schedule"], train["warmup_steps"], train["min_lr_frac"]) == ("linear", 10, 0.25)
    trainer = Trainer(corpus, tmp_path, {}, {"max_steps": 20, "lr_schedule": "constant"},
                      resume=tmp_path / "last.safetensors", progress=False)
    assert trainer.tcfg.lr_schedule == "constant" and trainer.tcfg.min_lr_frac == 0.25


# ----- evaluation on a time schedule -------------------------------------------------

class FakeClock:
    """time.perf_counter for charrnn.training that advances `tick` seconds per call."""

    def __init__(self, tick):
        self.now, self.tick = 1000.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_time_based_evaluation_lands_at_each_multiple_of_the_interval(corpus, tmp_path, monkeypatch):
    import charrnn.training as train

    monkeypatch.setattr(train.time, "perf_counter", FakeClock(0.5))
    summary = run(corpus, tmp_path, 30, eval_every="10s")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    marks = [int(r["elapsed"] // 10) for r in rows[:-1]]
    assert marks == list(range(1, len(rows))) and len(rows) >= 3  # one evaluation per 10 s mark, in order
    assert rows[-1]["step"] == summary["step"] == 30  # and one at the end
    assert load_checkpoint(tmp_path / "last.safetensors").train["eval_every"] == "10s"


def test_time_based_evaluation_longer_than_the_run_evaluates_only_at_the_end(corpus, tmp_path):
    run(corpus, tmp_path, 15, eval_every="3600s")
    rows = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [15]


def test_a_larger_budget_on_resume_stretches_the_schedule_over_it(corpus, tmp_path):
    run(corpus, tmp_path, 20, warmup_steps=0, lr_schedule="linear", lr=0.01)
    trainer = Trainer(corpus, tmp_path, {}, {"max_steps": 40}, resume=tmp_path / "last.safetensors", progress=False)
    assert trainer.lr(0.0) == pytest.approx(0.005)  # step 20 of 40, where the first run had reached 0


def test_slow_validation_is_noted_once_and_only_when_it_takes_a_large_share(corpus, tmp_path, capsys):
    trainer = Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_steps=1), progress=False)
    capsys.readouterr()
    trainer._note_evaluation_cost(4.0, 1.0)  # short, however large its share
    trainer._note_evaluation_cost(10.0, 100.0)  # long, but a small share
    assert "note: validating" not in capsys.readouterr().err
    trainer._note_evaluation_cost(10.0, 20.0)
    assert "took 10s, against 20s of training" in capsys.readouterr().err
    trainer._note_evaluation_cost(10.0, 20.0)
    assert capsys.readouterr().err == ""


def test_a_second_trainer_on_a_busy_directory_is_refused_until_the_first_ends(corpus, tmp_path):
    first = Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_steps=20), progress=False)
    waiting = Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_steps=10), progress=False)
    original, refusals = first.train_step, []

    def train_step(state, elapsed):
        if first.step == 15:  # its files are on disk, and it is still running
            before = files_of(tmp_path)
            with pytest.raises(CharrnnError, match="another charrnn train is writing to"):
                waiting.run()  # set up before the first run began
            with pytest.raises(CharrnnError, match="another charrnn train is writing to"):
                Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_steps=10), overwrite=True,
                        progress=False)  # its start-up sweep of stale files waits too
            assert files_of(tmp_path) == before
            refusals.append(first.step)
        return original(state, elapsed)

    first.train_step = train_step
    first.run()
    assert refusals == [15]
    # Free again once the run ended; but a trainer set up before it must not write over it.
    before = files_of(tmp_path)
    with pytest.raises(CharrnnError, match="wrote to .* after this one was set up"):
        waiting.run()
    assert files_of(tmp_path) == before
    run(corpus, tmp_path, 30, resume=tmp_path / "last.safetensors")


# ----- the weight average, patience, overfitting --------------------------------------

def test_a_weight_average_is_what_is_validated_saved_and_resumed_exactly(corpus, tmp_path):
    from charrnn.evaluate import score_ids

    run(corpus, tmp_path / "whole", 40, ema=0.9, lr_schedule="constant")
    run(corpus, tmp_path / "split", 20, ema=0.9, lr_schedule="constant")
    run(corpus, tmp_path / "split", 40, resume=tmp_path / "split" / "last.safetensors")
    for name in ("last.safetensors", "best.safetensors"):
        assert (tmp_path / "split" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    last = load_checkpoint(tmp_path / "whole" / "last.safetensors")
    assert last.raw is not None and not np.array_equal(last.raw.flat, last.params.flat)
    trainer = Trainer(corpus, tmp_path / "other", TINY_MODEL, dict(TINY_TRAIN, max_steps=1), progress=False)
    from charrnn.network import Network

    total, count = score_ids(Network(last.config, last.params), trainer.data.val_ids, streams=4, chunk=16)
    assert last.state.val_loss == pytest.approx(total / count, rel=1e-12)  # the average was validated


def test_patience_stops_after_that_many_evaluations_without_a_new_best(corpus, tmp_path, monkeypatch):
    losses = iter([3.0, 2.9, 2.95, 2.96, 2.97, 2.98])
    monkeypatch.setattr(Trainer, "validate", lambda self: next(losses))
    summary = run(corpus, tmp_path, 60, patience=2)
    assert summary["step"] == 40 and summary["patience_stop"] and summary["best_step"] == 20
    with raises_as_cli("already meets --patience 2 .*; give a larger --patience$"):
        run(corpus, tmp_path, 80, resume=tmp_path / "last.safetensors")  # a larger budget would not do


def test_patience_without_a_validation_split_is_refused(corpus, tmp_path):
    with raises_as_cli("--patience counts evaluations without a new best validation loss, and --val-frac 0"):
        run(corpus, tmp_path, 20, patience=2, val_frac=0.0)
    assert not (tmp_path / "last.safetensors").exists()


def test_overfitting_is_said_in_words():
    from charrnn.rundir import overfitting

    rows = [{"step": 10, "train_loss": 2.0, "val_loss": 2.1}, {"step": 20, "train_loss": 1.5, "val_loss": 1.6},
            {"step": 30, "train_loss": 1.2, "val_loss": 1.603}]
    assert overfitting(rows) is None  # within noise
    rows.append({"step": 40, "train_loss": 1.0, "val_loss": 1.7})
    assert overfitting(rows) == ("overfitting: the validation loss rose from 1.6000 (step 20) to 1.7000 (step 40) "
                                 "while the training loss fell from 1.5000 to 1.0000")
    rows.append({"step": 50, "train_loss": 1.6, "val_loss": 1.7})  # both rose: not overfitting
    assert overfitting(rows) is None
