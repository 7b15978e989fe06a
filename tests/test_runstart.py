"""How a run starts: fine-tuning (init) on top of another model's checkpoint."""

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHAKESPEARE, raises_as_cli

import charrnn
from charrnn.cli import cli

BASE = dict(layers=1, hidden=24, embed=8, batch_size=8, seq_len=32, eval_every=50, max_steps=100)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    (d / "old.txt").write_text(SHAKESPEARE.read_text()[:20000])
    (d / "new.txt").write_text(SHAKESPEARE.read_text()[20000:30000] + "\nCafé — über naïve words ☃\n" * 20)
    charrnn.train(d / "old.txt", d / "run", progress=False, **BASE)
    return d


def test_fine_tuning_grows_the_vocabulary_and_names_the_new_characters(base, tmp_path):
    old = charrnn.load(base / "run" / "best.safetensors")
    result = CliRunner().invoke(cli, ["train", str(base / "new.txt"), "--out", str(tmp_path / "ft"), "--init",
                                      str(base / "run" / "best.safetensors"), "--max-steps", "30", "-q"])
    assert result.exit_code == 0, result.output
    added = [c for c in "é—üï☃" if c not in old.vocab]
    assert "note: added 5 characters" in result.stderr and all(f"'{c}'" in result.stderr for c in added)
    tuned = charrnn.load(tmp_path / "ft" / "best.safetensors")
    assert tuned.vocab[:len(old.vocab)] == old.vocab and sorted(tuned.vocab[len(old.vocab):]) == sorted(added)
    assert tuned.config.hidden == 24 and tuned.checkpoint.train["init"] == str(base / "run" / "best.safetensors")
    last = charrnn.load(tmp_path / "ft" / "last.safetensors").checkpoint
    assert last.state.step == 30  # a fresh run: its own steps and budget


def test_the_grown_model_predicts_the_old_text_as_the_old_one_did(base, tmp_path):
    from charrnn.runstart import fine_tuned_run

    old = charrnn.load(base / "run" / "best.safetensors")
    start = fine_tuned_run(base / "run" / "best.safetensors", base / "new.txt", {}, {}, None)
    grown = charrnn.Model(type(old.checkpoint)(start.cfg, start.vocab, start.params))
    text = SHAKESPEARE.read_text()[:3000]
    assert grown.score(text).nats_per_char == pytest.approx(old.score(text).nats_per_char, abs=0.02)
    for name in ("rnn.weight_ih_l0", "rnn.weight_hh_l0"):
        np.testing.assert_array_equal(start.params[name], old.checkpoint.params[name])
    v = len(old.vocab)
    np.testing.assert_array_equal(start.params["embedding.weight"][:v], old.checkpoint.params["embedding.weight"])


def test_fine_tuning_refuses_what_would_contradict_the_checkpoint(base, tmp_path):
    ckpt = base / "run" / "best.safetensors"
    with raises_as_cli(f"--hidden 32 conflicts with {ckpt}'s hidden = 24: --init takes the model's shape"):
        charrnn.train(base / "new.txt", tmp_path / "a", init=str(ckpt), hidden=32, progress=False)
    charrnn.train(base / "new.txt", tmp_path / "b", init=str(ckpt), hidden=24, max_steps=1, progress=False)
    with raises_as_cli("--init starts a new run and --resume continues one: give one of them"):
        charrnn.train(base / "new.txt", tmp_path / "b", init=str(ckpt), resume=tmp_path / "b" / "last.safetensors",
                      progress=False)
    with raises_as_cli("--vocab does not apply with --init"):
        charrnn.train(base / "new.txt", tmp_path / "c", init=str(ckpt), vocab=str(ckpt), progress=False)


def test_a_line_mode_checkpoint_fine_tunes_in_line_mode(tmp_path):
    from conftest import ROOT

    names = (ROOT / "data" / "first-names.txt").read_text().split("\n")
    (tmp_path / "first.txt").write_text("\n".join(names[::5]))
    (tmp_path / "more.txt").write_text("\n".join(names[1::5]) + "\nZoë\nJosé\n")
    charrnn.train(tmp_path / "first.txt", tmp_path / "base", lines=True, layers=1, hidden=16, embed=8,
                  batch_size=16, max_steps=20, progress=False)
    run = charrnn.train(tmp_path / "more.txt", tmp_path / "tuned", init=str(tmp_path / "base" / "last.safetensors"),
                        max_steps=20, progress=False)
    tuned = run.load()
    assert tuned.lines and "ë" in tuned.vocab and tuned.source("José") in ("train", "val")
