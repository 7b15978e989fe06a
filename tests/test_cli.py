"""Every command through Click's CliRunner."""

import json

import pytest
from click.testing import CliRunner
from conftest import SHAKESPEARE, ctrl_c_in

from charrnn.cli import cli

COMMANDS = ["vocab", "train", "sample", "evaluate", "info"]
TINY = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "10", "--max-steps", "20", "-q"]


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text()[:6000])
    return path


@pytest.fixture(scope="module")
def trained(runner, corpus):
    out = corpus.parent / "run"
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    return out / "best.safetensors"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_help_with_an_example(runner, command, flag):
    result = runner.invoke(cli, [command, flag])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"charrnn {command}" in result.output


def test_top_level_help_lists_every_command(runner):
    result = runner.invoke(cli, ["-h"])
    assert result.exit_code == 0
    assert all(c in result.output for c in COMMANDS)


def test_train_help_names_every_setting_the_budget_chooses(runner):
    from charrnn.autoconfig import CHOSEN

    description = runner.invoke(cli, ["train", "--help"]).output.split("Options:")[0]
    description = " ".join(description.split())  # the help wraps lines
    for name in CHOSEN:
        assert "--" + name.replace("_", "-") in description


def test_vocab_writes_json(runner, corpus, tmp_path):
    out = tmp_path / "v.json"
    result = runner.invoke(cli, ["vocab", str(corpus), "-o", str(out)])
    assert result.exit_code == 0, result.output
    chars = json.loads(out.read_text())["chars"]
    assert chars == sorted(set(corpus.read_text()))


def test_vocab_to_stdout(runner, corpus):
    result = runner.invoke(cli, ["vocab", str(corpus), "-o", "-"])
    assert json.loads(result.stdout)["format"] == "charrnn-vocab"


def test_train_writes_the_run_directory(trained):
    names = {p.name for p in trained.parent.iterdir()}
    assert {"last.safetensors", "best.safetensors", "metrics.jsonl"} <= names


def test_no_progress_bar_when_stderr_is_not_a_terminal(runner, corpus, tmp_path):
    args = [a for a in TINY if a != "-q"]
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and "step/s" not in result.stderr and "s/step" not in result.stderr
    assert "step 10: train loss" in result.stderr  # the log lines still come


def test_train_with_a_vocab_file(runner, corpus, tmp_path):
    vocab = tmp_path / "v.json"
    runner.invoke(cli, ["vocab", str(corpus), "-o", str(vocab)])
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(tmp_path / "r"), "--vocab", str(vocab), *TINY])
    assert result.exit_code == 0, result.output


def test_eval_every_takes_steps_or_training_time(runner, corpus, tmp_path):
    from charrnn.checkpoint import load_checkpoint

    args = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq-len", "16",
            "--max-steps", "12", "-q"]
    for every, saved in (("1m", "60s"), ("90s", "90s"), ("5", 5)):
        out = tmp_path / every
        result = runner.invoke(cli, ["train", str(corpus), "--out", str(out), "--eval-every", every, *args])
        assert result.exit_code == 0, result.output
        assert load_checkpoint(out / "last.safetensors").train["eval_every"] == saved
        rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rows == ([5, 10, 12] if every == "5" else [12])
    info = runner.invoke(cli, ["info", str(tmp_path / "1m")])
    assert "--eval-every 60s" in info.stdout and "--lr-schedule cosine --warmup-steps 100" in info.stdout


def test_ctrl_c_in_the_step_that_spends_the_budget_ends_the_run_as_done(runner, corpus, tmp_path, monkeypatch):
    """Nothing would be left to resume: the last step is validated and the run is done."""
    ctrl_c_in(monkeypatch, "train_step", lambda t: t.step == 14)  # train_step runs before step counts it
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(tmp_path), *TINY[:-3], "--max-steps", "15"])
    assert result.exit_code == 0, result.output
    assert "done: 15 steps" in result.stderr and "--resume" not in result.stderr
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 15] and rows[-1]["val_loss"] is not None


def test_ctrl_c_during_an_evaluation_says_what_it_saved(runner, corpus, tmp_path, monkeypatch):
    ctrl_c_in(monkeypatch, "validate", lambda t: t.step == 10)
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(tmp_path), *TINY])
    assert result.exit_code == 130
    last = tmp_path / "last.safetensors"
    assert f"interrupted at step 10; saved {last} at its evaluation (best validation loss " in result.stderr
    assert "untouched" not in result.stderr and f"continue with --resume {last}" in result.stderr


def test_sample_prints_prime_then_exactly_length_characters(runner, trained):
    result = runner.invoke(cli, ["sample", str(trained), "--length", "120", "--prime", "ROMEO:", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ROMEO:")
    assert len(result.stdout) == len("ROMEO:") + 120 + 1  # and a final newline
    again = runner.invoke(cli, ["sample", str(trained), "--length", "120", "--prime", "ROMEO:", "--seed", "7"])
    assert again.stdout == result.stdout


def test_sample_without_seed_reports_the_seed_it_used(runner, trained):
    result = runner.invoke(cli, ["sample", str(trained), "--length", "40"])
    seed = int(result.stderr.split("seed:")[1].split()[0])
    again = runner.invoke(cli, ["sample", str(trained), "--length", "40", "--seed", str(seed)])
    assert again.stdout == result.stdout


def test_sample_argmax(runner, trained):
    a = runner.invoke(cli, ["sample", str(trained), "--length", "30", "--argmax"])
    b = runner.invoke(cli, ["sample", str(trained), "--length", "30", "--argmax"])
    assert a.exit_code == 0 and a.stdout == b.stdout


def test_sample_k_of_a_batch_is_reproduced_alone_by_its_own_seed(runner, trained):
    args = ["sample", str(trained), "-n", "60", "--prime", "TH", "--top-k", "8", "--top-p", "0.95",
            "--stop", "e\\n", "--seed", "5", "--json"]
    result = runner.invoke(cli, [*args, "--num-samples", "3"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sample"] for r in rows] == [1, 2, 3] and rows[0]["seed"] == 5
    from charrnn.config import SampleConfig

    given = {"checkpoint": str(trained), "length": 60, "temperature": 0.8, "top_k": 8, "top_p": 0.95,
             "argmax": False, "prime": "TH", "stop": ["e\n"], "num_samples": 3, "seed": 5}
    assert rows[0]["settings"] == {**SampleConfig().to_dict(), **given}  # every setting, the others at defaults
    for row in rows:
        assert row["text"].startswith("TH") and len(row["text"]) == 2 + row["generated"]
        assert (row["stop"] == "e\n") == row["text"].endswith("e\n") and (row["stop"] or row["generated"] == 60)
        alone = runner.invoke(cli, [*args[:-3], "--seed", str(row["seed"]), "--json"])
        assert json.loads(alone.stdout)["text"] == row["text"]
    again = runner.invoke(cli, [*args, "--num-samples", "3"])
    assert again.stdout == result.stdout


def test_sample_several_as_text_each_under_a_header(runner, trained):
    result = runner.invoke(cli, ["sample", str(trained), "-n", "30", "--num-samples", "2", "--seed", "3",
                                 "--prime", "A"])
    assert result.exit_code == 0, result.output
    first, second = result.stdout.split("\n\n--- sample 2 of 2, seed ")
    assert first.startswith("--- sample 1 of 2, seed 3 ---\nA") and len(first) == len("--- sample 1 of 2, seed 3 ---\n") + 31
    seed = second.split(" ---")[0]
    alone = runner.invoke(cli, ["sample", str(trained), "-n", "30", "--seed", seed, "--prime", "A"])
    assert second.split(" ---\n", 1)[1] == alone.stdout


def test_sample_ctrl_c_keeps_what_was_printed(runner, trained, monkeypatch):
    from charrnn.network import Network

    original, calls = Network.generate, []

    def generate_then_interrupt(self, *args, **kwargs):  # --stream: one character per call
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "generate", generate_then_interrupt)
    result = runner.invoke(cli, ["sample", str(trained), "-n", "100", "--prime", "AB", "--seed", "1", "--stream"])
    assert result.exit_code == 130 and "interrupted" in result.stderr
    monkeypatch.undo()
    full = runner.invoke(cli, ["sample", str(trained), "-n", "100", "--prime", "AB", "--seed", "1"]).stdout
    assert result.stdout == full[:2 + 10] + "\n"


def test_evaluate_prints_all_three_measures(runner, trained, corpus):
    result = runner.invoke(cli, ["evaluate", str(trained), str(corpus)])
    assert result.exit_code == 0, result.output
    assert "nats/char" in result.stdout and "bits/char" in result.stdout and "perplexity" in result.stdout


def test_evaluate_json(runner, trained, corpus):
    result = runner.invoke(cli, ["evaluate", str(trained), str(corpus), "--json"])
    report = json.loads(result.stdout)
    assert set(report) == {"nats_per_char", "bits_per_char", "perplexity", "chars", "nats_per_char_stderr"}
    assert report["chars"] == len(corpus.read_text()) - 1


def test_evaluate_reads_standard_input(runner, trained, corpus):
    from_file = runner.invoke(cli, ["evaluate", str(trained), str(corpus), "--json"])
    from_stdin = runner.invoke(cli, ["evaluate", str(trained), "-", "--json"], input=corpus.read_bytes())
    assert from_stdin.exit_code == 0, from_stdin.output
    assert from_stdin.stdout == from_file.stdout


def test_evaluate_several_files_a_line_each_and_a_total(runner, trained, corpus, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(corpus.read_text()[:700])
    b.write_text(corpus.read_text()[700:2000])
    result = runner.invoke(cli, ["evaluate", str(trained), str(a), str(b)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{a}: ") and lines[1].startswith(f"{b}: ")
    assert lines[2].startswith("total: ") and "over 1,998 characters in 2 files" in lines[2]
    report = json.loads(runner.invoke(cli, ["evaluate", str(trained), str(a), str(b), "--json"]).stdout)
    alone = [json.loads(runner.invoke(cli, ["evaluate", str(trained), str(p), "--json"]).stdout) for p in (a, b)]
    assert [r.pop("file") for r in report["files"]] == [str(a), str(b)] and report["files"] == alone
    nats = sum(r["nats_per_char"] * r["chars"] for r in alone) / 1998
    assert report["total"]["chars"] == 1998 and report["total"]["nats_per_char"] == pytest.approx(nats, rel=1e-12)


def test_novelty_of_a_verbatim_slice_shuffled_text_and_a_short_text(runner, trained, corpus, tmp_path):
    import random

    text = corpus.read_text()
    verbatim, shuffled, short = tmp_path / "verbatim.txt", tmp_path / "shuffled.txt", tmp_path / "short.txt"
    verbatim.write_text(text[1000:2500])
    chars = list(text[1000:2500])
    random.Random(0).shuffle(chars)
    shuffled.write_text("".join(chars))
    short.write_text(text[:30])
    args = ["evaluate", str(trained), str(verbatim), str(shuffled), str(short), "--novelty", "--train", str(corpus)]
    report = json.loads(runner.invoke(cli, [*args, "--json"]).stdout)
    novelty = [r["novelty"] for r in report["files"]]
    assert novelty[0] == {"20": 0.0, "40": 0.0}
    assert novelty[1]["20"] > 0.99 and novelty[1]["40"] == 1.0
    assert novelty[2] == {"20": 0.0, "40": None}
    assert report["total"]["novelty"]["40"] == pytest.approx(1461 / (1461 + 1461))
    lines = runner.invoke(cli, args).stdout.splitlines()
    assert lines[0].endswith(f"not in {corpus}: 0.0% of 20-grams, 0.0% of 40-grams")
    assert lines[2].endswith("0.0% of 20-grams, no 40-grams (shorter than 40 characters)")


def test_sample_piped_into_evaluate_with_novelty(runner, trained, corpus):
    sample = runner.invoke(cli, ["sample", str(trained), "-n", "300", "--seed", "2"])
    result = runner.invoke(cli, ["evaluate", str(trained), "-", "--novelty", "--train", str(corpus), "--json"],
                           input=sample.stdout)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"nats_per_char", "bits_per_char", "perplexity", "chars", "nats_per_char_stderr", "novelty"}
    assert report["chars"] == 300 and 0.0 <= report["novelty"]["20"] <= 1.0


def test_info_on_a_run_directory_and_on_a_checkpoint(runner, trained):
    run = runner.invoke(cli, ["info", str(trained.parent)])
    assert run.exit_code == 0, run.output
    text = run.stdout
    for expected in ["last.safetensors (resumable)", "lstm, 1 layer of 16 units, embedding 8, dropout 0",
                     "20 steps", "best val", "at step 20", "--hidden 16", "--batch-size 4 --seq-len 16",
                     "--max-steps 20", "validation loss (nats/char) at 2 evaluations:", "step 10 to 20"]:
        assert expected in text, expected
    report = json.loads(runner.invoke(cli, ["info", str(trained.parent), "--json"]).stdout)
    from charrnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained)
    assert report["parameters"] == ckpt.params.flat.size and report["vocab"] == ckpt.vocab.chars
    assert report["config"] == ckpt.config.to_dict() and report["train"] == ckpt.train
    assert report["step"] == 20 and report["best_step"] == ckpt.state.best_step
    assert report["best_val_loss"] == ckpt.state.best_val_loss and report["epoch"] > 0
    assert [row["step"] for row in report["history"]] == [10, 20]
    alone = runner.invoke(cli, ["info", str(trained)])
    assert alone.exit_code == 0 and "best.safetensors" in alone.stdout and "validation loss (" not in alone.stdout
    assert json.loads(runner.invoke(cli, ["info", str(trained), "--json"]).stdout)["history"] is None


@pytest.mark.parametrize("name,message", [("missing", "no such checkpoint file or run directory"),
                                          (".", "is not a run directory"),
                                          ("corpus.txt", "is not a safetensors checkpoint")])
def test_info_refuses_what_is_not_a_checkpoint(runner, corpus, name, message):
    result = runner.invoke(cli, ["info", str(corpus.parent / name)])
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output


def test_any_utf8_corpus(runner, tmp_path):
    text = "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n" * 40 + "Ünïcödé ✓ 🙂\n" * 20
    corpus = tmp_path / "poem.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    sample = runner.invoke(cli, ["sample", str(out / "best.safetensors"), "--prime", "春眠", "--length", "20",
                                 "--seed", "1"])
    assert sample.exit_code == 0 and len(sample.stdout) == 2 + 20 + 1
    assert set(sample.stdout[:-1]) <= set(text)


def test_sample_evaluate_and_info_on_a_unicode_corpus(runner, tmp_path):
    text = "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n" * 40 + "Ünïcödé ✓ 🙂\n" * 20
    corpus = tmp_path / "poem.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert runner.invoke(cli, ["train", str(corpus), "--out", str(out), *TINY]).exit_code == 0
    ckpt = str(out / "best.safetensors")
    result = runner.invoke(cli, ["sample", ckpt, "--prime", "🙂", "-n", "40", "--num-samples", "3", "--stop", "。",
                                 "--top-k", "10", "--top-p", "0.9", "--seed", "4", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(r["text"].startswith("🙂") and set(r["text"]) <= set(text) for r in rows)
    assert all(r["text"].endswith("。") == (r["stop"] == "。") for r in rows)
    sample = "".join(r["text"] for r in rows)
    scored = runner.invoke(cli, ["evaluate", ckpt, "-", "--novelty", "--train", str(corpus)], input=sample)
    assert scored.exit_code == 0, scored.output
    assert "perplexity" in scored.stdout and ("% of 20-grams" in scored.stdout or "no 20-grams" in scored.stdout)
    verbatim = runner.invoke(cli, ["evaluate", ckpt, "-", "--novelty", "--train", str(corpus), "--json"],
                             input=text[5:200])
    assert json.loads(verbatim.stdout)["novelty"] == {"20": 0.0, "40": 0.0}
    info = runner.invoke(cli, ["info", str(out)])
    assert info.exit_code == 0 and "春" in info.stdout and "🙂" in info.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "missing.txt", "--out", "x"], "no such file"),
    (["sample", "missing.safetensors"], "no such checkpoint"),
    (["evaluate", "missing.safetensors", "missing.txt"], "no such checkpoint"),
])
def test_bad_input_is_one_line_and_non_zero(runner, args, message, tmp_path):
    result = runner.invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_prime_is_refused_before_any_output(runner, trained):
    result = runner.invoke(cli, ["sample", str(trained), "--prime", "ROMEO€"])
    assert result.exit_code == 1
    assert "'€'" in result.stderr and result.stdout == ""


def test_ctrl_c_during_training_saves_last_and_exits_130(runner, corpus, tmp_path, monkeypatch):
    import os
    import signal

    from charrnn.training import Trainer

    original = Trainer.train_step

    def train_step(self, state, elapsed):
        if self.step + 1 == 15:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, state, elapsed)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(out), *TINY])
    assert result.exit_code == 130, result.output
    last = out / "last.safetensors"
    assert f"interrupted at step 15; saved {last}" in result.stderr and f"--resume {last}" in result.stderr
    from charrnn.checkpoint import load_checkpoint

    assert load_checkpoint(last).state.step == 15


@pytest.mark.parametrize("where,args,message", [
    ("charrnn.training.Trainer.__init__", ["train", "CORPUS", "--out", "OUT"], "interrupted"),
    ("charrnn.training.Trainer.run", ["train", "CORPUS", "--out", "OUT"], "files in OUT are complete"),
    ("charrnn.sample.write_samples", ["sample", "CKPT"], "interrupted"),
    ("charrnn.evaluate.score_text", ["evaluate", "CKPT", "CORPUS"], "interrupted"),
])
def test_ctrl_c_anywhere_exits_130_with_a_short_note(runner, corpus, trained, tmp_path, monkeypatch,
                                                      where, args, message):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupted)
    names = {"CORPUS": str(corpus), "OUT": str(tmp_path / "out"), "CKPT": str(trained)}
    result = runner.invoke(cli, [names.get(a, a) for a in args])
    assert result.exit_code == 130
    assert message.replace("OUT", str(tmp_path / "out")) in result.stderr
    assert "Aborted" not in result.output and "Traceback" not in result.output


def test_help_mentions_skip_unknown(runner):
    assert "--skip-unknown" in runner.invoke(cli, ["evaluate", "-h"]).output


def test_out_of_memory_hint_fits_the_command(runner, trained, monkeypatch):
    def exhausted(*a, **k):
        raise MemoryError

    monkeypatch.setattr("charrnn.sample.write_samples", exhausted)
    result = runner.invoke(cli, ["sample", str(trained), "--seed", "1"])
    assert result.exit_code == 1 and "Error: out of memory: try a smaller --length" in result.stderr


def test_a_closed_pipe_ends_sample_quietly(trained):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", str(trained), "-n", "1000000", "--seed", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()  # as `| head -c 10` does
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 141 and stderr == ""


@pytest.mark.parametrize("flags,settings", [
    (["--min-p", "0.2", "-t", "1.3"], dict(min_p=0.2, temperature=1.3)),
    (["--ban", "e\\n", "--seed", "4"], dict(ban="e\n", seed=4)),
    (["--dry-multiplier", "0.8", "--dry-allowed-length", "3", "--dry-last-n", "64", "-t", "0.3"],
     dict(dry_multiplier=0.8, dry_allowed_length=3, dry_last_n=64, temperature=0.3)),
    (["--beam", "3", "--stop", "\\n"], dict(beam=3, stop=["\n"])),
])
def test_samplers_from_the_command_line_are_the_apis(runner, trained, flags, settings):
    import charrnn

    seed = [] if "--seed" in flags else ["--seed", "1"]
    result = runner.invoke(cli, ["sample", str(trained), "-n", "150", "--prime", "ROMEO:", *flags, *seed, "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    expected = charrnn.load(trained).generate("ROMEO:", length=150, **{"seed": 1, **settings})
    assert row["text"] == expected and all(row["settings"][k] == v for k, v in settings.items())


def test_beam_with_a_setting_it_decides_itself_is_refused(runner, trained):
    result = runner.invoke(cli, ["sample", str(trained), "--beam", "2", "--top-k", "3"])
    assert result.exit_code == 1 and result.stderr.strip() == (
        "Error: --top-k does not apply to beam search (--beam), which finds the most likely text itself; leave it out")
