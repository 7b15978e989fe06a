"""Every class of bad input, through the CLI: a one-line `Error: ...` on stderr that
names the problem, a non-zero exit status, no traceback, and nothing written."""

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHAKESPEARE
from test_checkpoint import rewrite_checkpoint
from test_cli import TINY

from charrnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from charrnn.cli import cli


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A corpus, a trained run, and damaged or foreign versions of its files."""
    d = tmp_path_factory.mktemp("bad")
    corpus = d / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:6000])
    result = CliRunner().invoke(cli, ["train", str(corpus), "--out", str(d / "run"), *TINY])
    assert result.exit_code == 0, result.output
    ckpt = d / "run" / "last.safetensors"
    data = ckpt.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (d / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "vocab.json").write_text(json.dumps({"format": "charrnn-vocab", "version": 1,
                                              "chars": sorted(set(corpus.read_text()))}))
    (d / "truncated.json").write_text((d / "vocab.json").read_text()[:40])
    (d / "foreign.json").write_text('{"vocab": ["a", "b"]}')
    (d / "random.json").write_bytes(np.random.default_rng(1).bytes(512))
    return d


def refused(result, *words, code=1):
    """The command failed with code and one 'Error:' line holding every word."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.stderr
    if code == 1:  # our own refusals: exactly one line, nothing else on stderr or stdout
        assert len(lines) == 1 and result.stdout == "", result.output
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


# ----- the corpus ---------------------------------------------------------------

@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"", "is empty"),
    ("dir", "is a directory"),
    (b"text\x00\x01\x02 more text" * 40, "binary"),
    (b"caf\xe9 au lait " * 40, "not UTF-8 text (invalid byte at offset 3)"),
    (b"\xef\xbb\xbf", "no characters"),
])
def test_unusable_corpus(runner, tmp_path, content, message):
    corpus = tmp_path / "corpus.txt"
    if content == "dir":
        corpus.mkdir()
    elif content is not None:
        corpus.write_bytes(content)
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(tmp_path / "run"), *TINY])
    refused(result, message, str(corpus))
    assert not (tmp_path / "run").exists()  # a refused run writes nothing, not even its directory


def test_corpus_too_short_says_by_how_much_and_what_fits(runner, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:1000])
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(tmp_path / "run"), "--max-steps", "1"])
    line = refused(result, "900 characters", "too short", "--batch-size 32 x --seq-len 50", "needs 1601",
                   "--batch-size 17 (with --seq-len 50)", "--seq-len 28 (with --batch-size 32)", "--val-frac 0.1")
    assert "would fit" in line
    assert not (tmp_path / "run").exists()


# ----- numbers --------------------------------------------------------------------

@pytest.mark.parametrize("flag,value,message", [
    ("--hidden", "0", "--hidden must be a positive integer, got 0"),
    ("--layers", "0", "--layers must be a positive integer, got 0"),
    ("--embed", "-3", "--embed must be a positive integer, got -3"),
    ("--dropout", "1.5", "--dropout must be in [0, 1), got 1.5"),
    ("--dropout", "nan", "--dropout must be in [0, 1), got nan"),
    ("--lr", "-1", "--lr must be a positive number, got -1.0"),
    ("--lr", "nan", "--lr must be a positive number, got nan"),
    ("--grad-clip", "inf", "--grad-clip must be a positive number, got inf"),
    ("--weight-decay", "-0.1", "--weight-decay must be a non-negative number, got -0.1"),
    ("--batch-size", "0", "--batch-size must be a positive integer, got 0"),
    ("--seq-len", "0", "--seq-len must be a positive integer, got 0"),
    ("--val-frac", "1", "--val-frac must be in [0, 1), got 1.0"),
    ("--eval-every", "0", "--eval-every must be a positive integer (steps) or a duration such as 1m, got 0"),
    ("--warmup-steps", "-1", "--warmup-steps must be a non-negative integer, got -1"),
    ("--min-lr-frac", "1.5", "--min-lr-frac must be in [0, 1], got 1.5"),
    ("--min-lr-frac", "nan", "--min-lr-frac must be in [0, 1], got nan"),
    ("--max-steps", "-1", "--max-steps must be a non-negative integer, got -1"),
    ("--max-epochs", "nan", "--max-epochs must be a positive number, got nan"),
    ("--seed", "-1", "--seed must be a non-negative integer, got -1"),
    ("--hidden", "100000000000", "does not fit in memory"),
])
def test_out_of_range_training_numbers_name_the_flag(runner, files, tmp_path, flag, value, message):
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(tmp_path / "run"),
                                 *TINY, flag, value])
    refused(result, message)
    assert not (tmp_path / "run").exists()


def test_out_of_range_flags_are_checked_before_a_resume_compares_them(runner, files, tmp_path):
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(files / "run"),
                                 "--resume", str(files / "run" / "last.safetensors"), "--hidden", "0"])
    refused(result, "--hidden must be a positive integer, got 0")


@pytest.mark.parametrize("args,message", [
    (["--temperature", "0"], "must be a positive number, got 0.0"),
    (["--temperature", "-1"], "must be a positive number, got -1.0"),
    (["--temperature", "nan"], "must be a positive number, got nan"),
    (["--length", "-5"], "must be a non-negative integer, got -5"),
    (["--top-k", "-1"], "must be a positive integer, got -1"),
    (["--top-k", "0"], "must be a positive integer, got 0"),
    (["--top-p", "1.5"], "must be a number in (0, 1], got 1.5"),
    (["--top-p", "nan"], "must be a number in (0, 1], got nan"),
    (["--top-p", "0"], "must be a number in (0, 1], got 0.0"),
    (["--top-p", "-0.5"], "must be a number in (0, 1], got -0.5"),
    (["--num-samples", "0"], "must be a positive integer, got 0"),
    (["--seed", "-1"], "must be a non-negative integer, got -1"),
])
def test_out_of_range_sampling_numbers_name_the_flag(runner, files, args, message):
    result = runner.invoke(cli, ["sample", str(files / "run" / "best.safetensors"), *args])
    line = refused(result, message, code=2)
    assert args[0] in line


def test_unknown_cell(runner, files, tmp_path):
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(tmp_path / "r"), "--cell", "tcn"])
    refused(result, "--cell", "'tcn' is not one of", code=2)


@pytest.mark.parametrize("args,words", [
    (["--lr-schedule", "exponential"], ["--lr-schedule", "'exponential' is not one of"]),
    (["--eval-every", "soon"], ["--eval-every", "'soon' is neither a number of steps nor a duration"]),
    (["--eval-every", "0s"], ["--eval-every", "'0s' must be longer than zero"]),
    (["--eval-every", "1x"], ["--eval-every", "'1x' is neither"]),
])
def test_unusable_schedule_and_evaluation_flags(runner, files, tmp_path, args, words):
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(tmp_path / "r"), *args])
    refused(result, *words, code=2)
    assert not (tmp_path / "r").exists()


# ----- the run directory --------------------------------------------------------------

def test_out_is_a_file(runner, files, tmp_path):
    out = tmp_path / "file"
    out.write_text("keep me")
    refused(runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(out), *TINY]), "is a file")
    assert out.read_text() == "keep me"


def test_out_below_a_file(runner, files, tmp_path):
    (tmp_path / "file").write_text("")
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(tmp_path / "file" / "run"), *TINY])
    refused(result, "cannot create --out")


@pytest.fixture
def unwritable_dir(tmp_path):
    if os.geteuid() == 0:  # permissions do not stop root; procfs refuses new files to everyone
        d = Path("/proc/self")
    else:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
    try:
        (d / "probe").write_bytes(b"")
    except OSError:
        return d
    pytest.skip(f"cannot make an unwritable directory here ({d} accepts files)")


def test_out_not_writable(runner, files, unwritable_dir):
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(unwritable_dir), *TINY])
    refused(result, "is not writable", str(unwritable_dir))


def test_a_new_run_does_not_replace_an_old_one(runner, files):
    before = (files / "run" / "best.safetensors").read_bytes()
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(files / "run"), *TINY])
    refused(result, "already holds a run", "--resume", "--overwrite")
    assert (files / "run" / "best.safetensors").read_bytes() == before


# ----- text outside the vocabulary ---------------------------------------------------

def test_prime_with_characters_outside_the_vocabulary(runner, files):
    result = runner.invoke(cli, ["sample", str(files / "run" / "best.safetensors"), "--prime", "Zoë → ✓"])
    refused(result, "'ë' (U+00EB)", "'→' (U+2192)", "'✓' (U+2713)")


@pytest.mark.parametrize("stop,message", [
    ("→", "--stop '→' can never occur: '→' (U+2192) not in the model's vocabulary"),
    ("", "--stop must not be empty"),
])
def test_stop_strings_the_model_cannot_produce(runner, files, stop, message):
    refused(runner.invoke(cli, ["sample", str(files / "run" / "best.safetensors"), "--stop", stop]), message)


def test_evaluation_text_with_characters_outside_the_vocabulary(runner, files, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("First Citizen: café ☕ and more café\n" * 3)
    result = runner.invoke(cli, ["evaluate", str(files / "run" / "best.safetensors"), str(text)])
    refused(result, "'é' (U+00E9)", "'☕' (U+2615)", "--skip-unknown")


def test_evaluate_skips_unknown_characters_only_when_asked_and_says_how_many(runner, files, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("First Citizen: café ☕ and more café\n" * 3)
    plain = tmp_path / "plain.txt"
    plain.write_text(text.read_text().replace("é", "").replace("☕", ""))
    ckpt = str(files / "run" / "best.safetensors")
    skipped = runner.invoke(cli, ["evaluate", ckpt, str(text), "--skip-unknown", "--json"])
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 9 characters not in the vocabulary" in skipped.stderr and "'☕'" in skipped.stderr
    report = json.loads(skipped.stdout)
    assert report["skipped"] == 9
    expected = json.loads(runner.invoke(cli, ["evaluate", ckpt, str(plain), "--json"]).stdout)
    assert report["nats_per_char"] == expected["nats_per_char"] and report["chars"] == expected["chars"]


def test_evaluate_when_skipping_leaves_nothing(runner, files, tmp_path):
    text = tmp_path / "all_unknown.txt"
    text.write_text("éé☕")
    refused(runner.invoke(cli, ["evaluate", str(files / "run" / "best.safetensors"), str(text), "--skip-unknown"]),
            "fewer than 2 characters once 3 unknown ones are skipped")


@pytest.mark.parametrize("data,message", [
    (b"caf\xe9 au lait", "standard input is not UTF-8 text (invalid byte at offset 3)"),
    (b"text\x00\x01 more", "standard input looks like binary data"),
    (b"", "standard input has fewer than 2 characters"),
    ("café ☕".encode(), "standard input: characters not in the vocabulary: 'é' (U+00E9), '☕' (U+2615); "
                         "pass --skip-unknown"),
])
def test_unusable_standard_input(runner, files, data, message):
    refused(runner.invoke(cli, ["evaluate", str(files / "run" / "best.safetensors"), "-"], input=data), message)


@pytest.mark.parametrize("args,message,code", [
    (["-", "-"], "standard input ('-') can be read only once", 1),
    (["CORPUS", "--novelty"], "--novelty needs --train CORPUS", 2),
    (["CORPUS", "--train", "CORPUS"], "--train is only used with --novelty", 2),
    (["CORPUS", "--novelty", "--train", "missing.txt"], "--train missing.txt: no such file", 1),
    (["CORPUS", "missing.txt"], "missing.txt: no such file", 1),
])
def test_evaluate_arguments_that_do_not_fit(runner, files, args, message, code):
    args = [str(files / "corpus.txt") if a == "CORPUS" else a for a in args]
    refused(runner.invoke(cli, ["evaluate", str(files / "run" / "best.safetensors"), *args]), message, code=code)


def test_corpus_with_characters_outside_a_vocab_file(runner, files, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:3000] + "ñ")
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(tmp_path / "run"),
                                 "--vocab", str(files / "vocab.json"), *TINY])
    refused(result, "not in --vocab", "'ñ' (U+00F1)")


# ----- checkpoint and vocabulary files ----------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda d: d / "missing.safetensors", "no such checkpoint file"),
    (lambda d: _empty_dir(d), "is a directory"),  # (--resume takes a run directory, with its last.safetensors)
    (lambda d: d / "truncated.safetensors", "is truncated"),
    (lambda d: d / "random.safetensors", "is not a safetensors checkpoint"),
    (lambda d: d / "vocab.json", "is not a safetensors checkpoint"),
    (lambda d: d / "corpus.txt", "is not a safetensors checkpoint"),
    (lambda d: _foreign(d), "not a charrnn checkpoint"),
    (lambda d: rewrite_checkpoint(d / "run" / "last.safetensors", d / "newer.safetensors",
                        edit_meta=lambda m: m.update(format_version=3)), "newer than this charrnn"),
    (lambda d: rewrite_checkpoint(d / "run" / "last.safetensors", d / "no_tensor.safetensors",
                        edit_tensors=lambda t: t.pop("decoder.bias")), "missing tensor 'decoder.bias'"),
    (lambda d: rewrite_checkpoint(d / "run" / "last.safetensors", d / "shape.safetensors",
                        edit_tensors=lambda t: t.update({"decoder.bias": np.zeros(3, np.float32)})),
     "'decoder.bias' has shape (3,), expected"),
    (lambda d: rewrite_checkpoint(d / "run" / "last.safetensors", d / "dtype.safetensors",
                        edit_tensors=lambda t: t.update({"decoder.bias": t["decoder.bias"].astype(np.float16)})),
     "'decoder.bias' is 'F16', expected F32"),
    (lambda d: rewrite_checkpoint(d / "run" / "last.safetensors", d / "config.safetensors",
                        edit_meta=lambda m: m["config"].update(hidden=10**9)), "has shape"),
])
@pytest.mark.parametrize("command", ["sample", "evaluate", "resume"])
def test_unusable_checkpoint_says_why(runner, files, tmp_path, make, message, command):
    path = str(make(files))
    args = {"sample": ["sample", path],
            "evaluate": ["evaluate", path, str(files / "corpus.txt")],
            "resume": ["train", str(files / "corpus.txt"), "--out", str(tmp_path / "r"), "--resume", path,
                       "--max-steps", "30"]}[command]
    refused(runner.invoke(cli, args), message)


def _empty_dir(d: Path) -> Path:
    (d / "empty").mkdir(exist_ok=True)
    return d / "empty"


def _foreign(d: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((2, 2), np.float32)}, d / "foreign.safetensors")
    return d / "foreign.safetensors"


def test_resume_needs_the_training_state(runner, files, tmp_path):
    sampled_only = tmp_path / "weights.safetensors"
    ckpt = load_checkpoint(files / "run" / "last.safetensors")
    save_checkpoint(sampled_only, Checkpoint(ckpt.config, ckpt.vocab, ckpt.params, state=ckpt.state))
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(tmp_path / "r"),
                                 "--resume", str(sampled_only), "--max-steps", "30"])
    refused(result, "no optimiser state")


def test_resume_with_a_damaged_training_state(runner, files, tmp_path):
    path = rewrite_checkpoint(files / "run" / "last.safetensors", tmp_path / "state.safetensors",
                    edit_meta=lambda m: m["state"].update(step="twenty"))
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(tmp_path / "r"),
                                 "--resume", str(path), "--max-steps", "30"])
    refused(result, "'step' is 'twenty', expected a non-negative integer")


@pytest.mark.parametrize("name,message", [
    ("missing.json", "cannot read vocabulary"),
    ("truncated.json", "invalid JSON"),
    ("random.json", "not a vocabulary file"),
    ("foreign.json", "not a charrnn vocabulary file"),
    ("run/last.safetensors", "not a vocabulary file"),
])
def test_unusable_vocab_file_says_why(runner, files, tmp_path, name, message):
    result = runner.invoke(cli, ["train", str(files / "corpus.txt"), "--out", str(tmp_path / "r"),
                                 "--vocab", str(files / name), *TINY])
    refused(result, message, name.split("/")[-1])
    assert not (tmp_path / "r").exists()


# ----- pickles are never loaded ---------------------------------------------------------

class _Touch:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _pickles(d: Path, marker: Path) -> dict[str, Path]:
    payload = pickle.dumps(_Touch(marker))
    out = {}
    for name in ("model.safetensors", "model.pt", "vocab.json"):
        out[name] = d / name
        out[name].write_bytes(payload)
    with zipfile.ZipFile(d / "archive.pt", "w") as z:  # how torch.save lays out a .pt file
        z.writestr("archive/data.pkl", payload)
    out["archive.pt"] = d / "archive.pt"
    np.savez(d / "arrays.npz", x=np.array([_Touch(marker)], dtype=object))
    out["arrays.npz"] = d / "arrays.npz"
    return out


def test_the_pickles_used_below_would_run_if_loaded(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Touch(marker)))
    assert marker.exists()  # so the absence of the marker below means nothing unpickled them


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "archive.pt", "arrays.npz", "vocab.json"])
def test_pickles_are_refused_without_being_run(runner, files, tmp_path, name):
    marker = tmp_path / "ran"
    path = str(_pickles(tmp_path, marker)[name])
    corpus = str(files / "corpus.txt")
    for args in (["sample", path], ["evaluate", path, corpus],
                 ["train", corpus, "--out", str(tmp_path / "r"), "--resume", path, "--max-steps", "30"],
                 ["train", corpus, "--out", str(tmp_path / "r"), "--vocab", path, *TINY]):
        refused(runner.invoke(cli, args), "not a", path)
    assert not marker.exists()
