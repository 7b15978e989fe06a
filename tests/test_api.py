"""The Python API: the same text and scores as the command line, errors as charrnn
exception classes, and a cheap `import charrnn`."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import SHAKESPEARE

import charrnn
from charrnn.cli import cli

TINY = dict(layers=1, hidden=16, embed=8, batch_size=4, seq_len=16, eval_every=10, max_steps=20)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    corpus = d / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:6000])
    return charrnn.train(corpus, d / "run", progress=False, **TINY), corpus


@pytest.fixture(scope="module")
def model(run):
    return run[0].load()


def sample_cli(path, *args):
    result = CliRunner().invoke(cli, ["sample", str(path), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_train_returns_the_run_and_its_checkpoints(run):
    result, _ = run
    assert result.step == 20 and not result.interrupted and result.best_val_loss > 0
    assert result.best.endswith("best.safetensors") and result.last.endswith("last.safetensors")


@pytest.mark.parametrize("settings,flags", [
    (dict(length=80, seed=7), ["-n", "80", "--seed", "7"]),
    (dict(length=60, temperature=1.2, top_k=5, top_p=0.9, seed=3), ["-n", "60", "-t", "1.2", "-k", "5",
                                                                    "--top-p", "0.9", "--seed", "3"]),
    (dict(length=60, argmax=True), ["-n", "60", "--argmax"]),
    (dict(length=200, seed=1, stop=["e ", "\n\n"]), ["-n", "200", "--seed", "1", "--stop", "e ", "--stop", "\\n\\n"]),
])
def test_generate_is_what_charrnn_sample_prints(model, run, settings, flags):
    text = model.generate("ROMEO:", **settings)
    assert sample_cli(run[0].best, "--prime", "ROMEO:", *flags) == text + "\n"
    assert text.startswith("ROMEO:")


def test_stream_pieces_join_to_generate_and_start_with_the_prime(model):
    pieces = list(model.stream("ROMEO", length=40, seed=11))
    assert pieces[0] == "ROMEO" and all(len(p) == 1 for p in pieces[1:])
    assert "".join(pieces) == model.generate("ROMEO", length=40, seed=11)


def test_a_stop_may_be_one_string_as_on_the_server(model):
    assert model.generate("ROMEO", length=200, seed=1, stop="e ") == model.generate("ROMEO", length=200, seed=1,
                                                                                      stop=["e "])
    assert model.settings(stop="\n\n").stop == ("\n\n",)


def test_two_open_streams_and_a_score_between_pieces_in_one_thread(model):
    """The model's lock is held for a block's computation, not between pieces: a
    caller may zip two streams, or score text while a stream is open."""
    a, b = model.stream("ROMEO", length=30, seed=1), model.stream("MERCUTIO", length=30, seed=2)
    pieces = list(zip(a, b))
    assert "".join(p for p, _ in pieces) == model.generate("ROMEO", length=30, seed=1)
    assert "".join(p for _, p in pieces) == model.generate("MERCUTIO", length=30, seed=2)
    c = model.stream("ROMEO", length=30, seed=1)
    first = [next(c), next(c)]
    assert model.score("To be, or not to be") == model.score("To be, or not to be")
    assert "".join(first + list(c)) == model.generate("ROMEO", length=30, seed=1)


def test_numpy_numbers_are_settings_like_any_other(tmp_path):
    """numpy's integers and floats (from a sweep over np.arange, say) train and save."""
    import numpy as np

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:3000])
    run = charrnn.train(corpus, tmp_path / "run", progress=False, **{**TINY, "max_steps": np.int64(4),
                                                                        "hidden": np.int64(8), "lr": np.float32(3e-3),
                                                                        "eval_every": np.int64(2)})
    assert run.step == 4 and run.load().config.hidden == 8


def test_generate_many_is_one_batch_of_what_each_seed_gives_alone(model, run):
    texts = model.generate_many(4, prime="A", length=30, seed=5, temperature=1.0)
    rows = [json.loads(line) for line in sample_cli(run[0].best, "--prime", "A", "-n", "30", "--seed", "5",
                                                      "-t", "1.0", "--num-samples", "4", "--json").splitlines()]
    assert texts == [row["text"] for row in rows]
    for row, text in zip(rows, texts):
        assert model.generate("A", length=30, seed=row["seed"], temperature=1.0) == text


def test_score_is_what_charrnn_evaluate_reports(model, run, tmp_path):
    known = set(model.vocab)
    text = "".join(c for c in SHAKESPEARE.read_text()[6000:8000] if c in known)
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(text)
    result = CliRunner().invoke(cli, ["evaluate", run[0].best, str(held_out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    score = model.score(text)
    assert score == charrnn.Score(report["nats_per_char"], report["bits_per_char"], report["perplexity"],
                                  report["chars"], report["nats_per_char_stderr"])
    assert 0 < score.nats_per_char_stderr < 0.2 * score.nats_per_char


def test_errors_are_charrnn_classes_naming_the_setting_or_the_characters(model, run):
    with pytest.raises(charrnn.UnknownSettingError, match="'temprature' \\(did you mean temperature\\?\\)"):
        model.generate("a", temprature=0.5)
    with pytest.raises(charrnn.SettingError, match="^top_p must be a number in \\(0, 1\\], got 1.5$"):
        model.generate("a", top_p=1.5)
    with pytest.raises(charrnn.UnknownCharactersError, match="'→' \\(U\\+2192\\)") as info:
        model.generate("a → b")
    assert info.value.chars == ["→"]
    with pytest.raises(charrnn.UnknownCharactersError, match="'é' \\(U\\+00E9\\)"):
        model.score("café au lait")
    assert model.score("café au lait", skip_unknown=True).chars == len("caf au lait") - 1
    with pytest.raises(charrnn.CharrnnError, match="at least 2"):
        model.score("a")
    with pytest.raises(charrnn.CharrnnError, match="use generate_many"):
        model.generate("a", num_samples=2)
    with pytest.raises(charrnn.UnknownSettingError, match="'hiden' \\(did you mean hidden\\?\\)"):
        charrnn.train(run[1], run[1].parent / "other", hiden=8)
    with pytest.raises(charrnn.CharrnnError, match="no such checkpoint file"):
        charrnn.load(run[1].parent / "missing.safetensors")


def test_importing_charrnn_loads_no_engine():
    code = "import sys, charrnn; assert 'numba' not in sys.modules and 'numpy' not in sys.modules, sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
