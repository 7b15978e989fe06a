"""Line mode: one sample per line, from reading to training, sampling and scoring."""

import json

import numpy as np
import pytest
import reference as ref
from click.testing import CliRunner
from conftest import ROOT

import charrnn
from charrnn.cli import cli
from charrnn.config import ModelConfig
from charrnn.lines import LineBatches, line_hash, pad, read_lines, split_lines
from charrnn.model import Parameters, RecurrentState, init_params
from charrnn.network import Network

NAMES = ROOT / "data" / "first-names.txt"
TINY = dict(lines=True, layers=1, hidden=32, embed=16, batch_size=16, eval_every=50, max_steps=200, seed=1)


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    """A sorted list of 861 names, as lists come."""
    path = tmp_path_factory.mktemp("names") / "names.txt"
    path.write_text("".join(line + "\n" for line in NAMES.read_text().split("\n")[::6] if line))
    return path


@pytest.fixture(scope="module")
def run(names):
    return charrnn.train(names, names.parent / "run", progress=False, **TINY)


def test_lines_are_the_non_empty_ones_without_their_ends(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"Anna\r\n\nBob\n  \nCy")
    assert read_lines(path) == ["Anna", "Bob", "  ", "Cy"]


def test_the_validation_lines_are_a_seeded_random_sample_not_the_last_ones():
    lines = [f"name{i:04d}" for i in range(1000)]  # sorted, as lists are
    train, val = split_lines(lines, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900 and not set(train) & set(val)
    assert split_lines(lines, 0.1, seed=3) == (train, val) and split_lines(lines, 0.1, seed=4) != (train, val)
    assert min(val) < "name0300" and max(val) > "name0700"  # spread over the list
    kept = np.unique(np.array([line_hash(x) for x in val], np.uint64))
    assert split_lines(lines[::-1], 0.5, seed=9, val_hashes=kept) == (train[::-1], val[::-1])  # as saved


def test_a_resumed_run_keeps_its_split_when_lines_occur_more_than_once():
    """A line that occurs ten times may have copies on both sides; the resumed run's
    split is the fresh one, not every copy of a validation line moved to validation."""
    lines = [f"name{i % 30:02d}" for i in range(300)]
    train, val = split_lines(lines, 0.1, seed=3)
    assert set(train) & set(val)  # copies on both sides
    kept = np.unique(np.array([line_hash(x) for x in val], np.uint64))
    assert split_lines(lines, 0.1, seed=3, val_hashes=kept) == (train, val)
    changed = lines[:-7]  # another corpus: every copy of a validation line stays out of training
    train2, val2 = split_lines(changed, 0.1, seed=3, val_hashes=kept)
    assert not set(train2) & set(val) and set(val2) == set(val)


def test_a_padded_batch_marks_what_is_not_a_line():
    x, y = pad([np.array([5, 6]), np.array([7])], 3, end=0)
    assert x.shape == y.shape == (8, 3)
    assert x[:3, 0].tolist() == [0, 5, 6] and y[:3, 0].tolist() == [5, 6, 0] and (y[3:, 0] == -1).all()
    assert x[:2, 1].tolist() == [0, 7] and y[:2, 1].tolist() == [7, 0] and (y[2:, 1] == -1).all()
    assert (y[:, 2] == -1).all()  # a row without a line


def test_each_epoch_shows_every_line_once_in_batches_of_like_length():
    rng = np.random.default_rng(0)
    lines = [rng.integers(1, 9, rng.integers(1, 30)) for _ in range(700)]
    batches = LineBatches(lines, 16, end=0, seed=5)
    assert batches.steps_per_epoch == 44
    seen, padding = [], 0
    for step in range(44, 88):  # the second epoch
        x, y = batches.batch_at(step)
        for b in range(16):
            n = int((y[:, b] >= 0).sum())
            if n:
                seen.append(tuple(x[1:n, b]))
        padding += int((y < 0).sum())
    assert sorted(seen) == sorted(tuple(line) for line in lines)
    assert padding < 0.5 * sum(len(line) + 1 for line in lines)  # bucketing keeps padding small
    again = LineBatches(lines, 16, end=0, seed=5)
    assert all((a == b).all() for a, b in zip(again.batch_at(50), batches.batch_at(50)))  # a function of the step


def test_a_padded_batch_has_the_loss_and_gradients_of_its_lines_alone(rng):
    """Padding is masked: the loss and every gradient of a batch equal the mean over its
    lines scored one by one, each from a zero state (no state leaks between lines)."""
    cfg = ModelConfig(vocab_size=6, layers=2, hidden=5, embed=4)
    params = Parameters(cfg, np.float64)
    init_params(params, rng)
    net = Network(cfg, params)
    lines = [rng.integers(1, 6, n) for n in (3, 1, 5)]
    x, y = pad(lines, 4, end=0)
    grads = params.zeros_like()
    loss, _ = net.loss_and_grad(x, y, RecurrentState.zeros(cfg, 4, np.float64), grads)
    total = sum(len(line) + 1 for line in lines)
    alone_grads, alone_loss = params.zeros_like(), 0.0
    for line in lines:
        lx, ly = pad([line], 1, end=0)
        g = params.zeros_like()
        n = len(line) + 1
        part, _ = net.loss_and_grad(lx, ly, RecurrentState.zeros(cfg, 1, np.float64), g)
        alone_loss += part * n / total
        alone_grads.flat[:] += g.flat * n / total
    assert loss == pytest.approx(alone_loss, rel=1e-12)
    np.testing.assert_allclose(grads.flat, alone_grads.flat, rtol=1e-9, atol=1e-12)
    numeric = ref.numeric_grad(lambda: net.loss_sum(x, y, RecurrentState.zeros(cfg, 4, np.float64))[0] / total,
                               params.kernel_view["decoder.bias"])
    np.testing.assert_allclose(grads["decoder.bias"], numeric, rtol=1e-6, atol=1e-9)


def test_training_learns_the_lines_and_keeps_its_split(run, names):
    model = run.load()
    assert model.lines and run.best_val_loss < 3.0
    train, val = model.checkpoint.lines
    lines = read_lines(names)
    assert train.size + val.size == len(set(lines)) and val.size == round(0.1 * len(lines))
    sources = [model.source(line) for line in lines]
    assert sources.count("val") == val.size and "new" not in sources
    assert model.source("Zzyzx") == "new"


def test_a_resumed_line_mode_run_is_bit_identical_to_an_uninterrupted_one(names, tmp_path):
    settings = dict(TINY, max_steps=60, eval_every=20, dropout=0.2)
    charrnn.train(names, tmp_path / "whole", progress=False, **settings)
    charrnn.train(names, tmp_path / "split", progress=False, **dict(settings, max_steps=20, lr_schedule="constant"))
    # a constant rate: the first 20 steps of a 60-step run are a 20-step run
    charrnn.train(names, tmp_path / "whole_c", progress=False, **dict(settings, lr_schedule="constant"))
    charrnn.train(names, tmp_path / "split", resume=tmp_path / "split" / "last.safetensors", progress=False,
                  max_steps=60)
    assert (tmp_path / "split" / "last.safetensors").read_bytes() == (tmp_path / "whole_c" / "last.safetensors").read_bytes()


def test_samples_are_single_lines_the_prime_starts_them_and_sources_are_told(run):
    model = run.load()
    texts = model.generate_many(30, length=40, seed=2, temperature=1.0)
    assert len(texts) == 30 and all("\n" not in t and 0 < len(t) <= 40 for t in texts)
    assert all(t.startswith("Ma") for t in model.generate_many(5, prime="Ma", length=40, seed=3))
    result = CliRunner().invoke(cli, ["sample", run.best, "--num-samples", "12", "--seed", "4", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["source"] for row in rows] == [model.source(row["text"]) for row in rows]
    counts = {s: sum(row["source"] == s for row in rows) for s in ("train", "val", "new")}
    assert (f"12 samples: {counts['train']} training lines, {counts['val']} validation lines, "
            f"{counts['new']} new") in result.stderr


def test_unique_draws_until_enough_distinct_new_lines(run):
    model = run.load()
    texts = model.generate_many(15, length=40, seed=5, temperature=1.0, unique=True)
    assert len(set(texts)) == 15 and all(model.source(t) == "new" for t in texts)
    result = CliRunner().invoke(cli, ["sample", run.best, "--num-samples", "15", "--seed", "5", "-t", "1.0",
                                      "-n", "40", "--unique", "--json"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["text"] for row in rows] == texts and [row["sample"] for row in rows] == list(range(1, 16))
    for row in rows[:3]:  # each one is its seed's sample alone
        assert model.generate(length=40, seed=row["seed"], temperature=1.0) == row["text"]
    short = CliRunner().invoke(cli, ["sample", run.best, "--num-samples", "3", "--seed", "5", "--argmax",
                                     "--unique"])
    assert short.exit_code == 0 and "note: only" in short.stderr  # argmax draws one line over and over
    stream_model = charrnn.Model(stream_checkpoint())
    with pytest.raises(charrnn.CharrnnError, match="unique applies to line-mode models"):
        stream_model.generate_many(2, unique=True, seed=1)


def stream_checkpoint():
    from charrnn.checkpoint import Checkpoint
    from charrnn.vocab import Vocab

    vocab = Vocab.from_chars("ab\n")
    cfg = ModelConfig(vocab_size=3, layers=1, hidden=4, embed=2)
    params = Parameters(cfg)
    init_params(params, np.random.default_rng(0))
    return Checkpoint(cfg, vocab, params)


def test_beam_search_ends_a_line_at_its_end(run):
    model = run.load()
    line = model.generate("Jo", beam=4, length=30)
    assert line.startswith("Jo") and "\n" not in line and len(line) < 32


def test_per_line_scores_one_record_per_input_line(run, tmp_path):
    model = run.load()
    text = tmp_path / "candidates.txt"
    text.write_text("Anna\n\nXqzv\nMaria\n")
    result = CliRunner().invoke(cli, ["evaluate", run.best, str(text), "--per-line", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["line"], r["text"]) for r in rows] == [(1, "Anna"), (2, ""), (3, "Xqzv"), (4, "Maria")]
    assert rows[2]["nats_per_char"] > rows[0]["nats_per_char"]  # an odd line scores worse
    for r, s in zip(rows, model.score_lines(text.read_text())):
        assert (r["nats"], r["nats_per_char"]) == pytest.approx((s.nats, s.nats_per_char))
        assert r["nats_per_char"] == pytest.approx(r["nats"] / (len(r["text"]) + 1))
    tsv = CliRunner().invoke(cli, ["evaluate", run.best, str(text), "--per-line"])
    assert tsv.stdout.splitlines()[0].split("\t") == ["1", f"{rows[0]['nats']:.6f}",
                                                      f"{rows[0]['nats_per_char']:.6f}", "Anna"]
    whole = json.loads(CliRunner().invoke(cli, ["evaluate", run.best, str(text), "--json"]).stdout)
    used = [r for r in rows if r["text"]]  # the empty line is no sample
    assert whole["nats_per_char"] == pytest.approx(sum(r["nats"] for r in used) / sum(len(r["text"]) + 1 for r in used))
    assert whole["nats_per_char_stderr"] > 0
