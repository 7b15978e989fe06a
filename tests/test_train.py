import json

import numpy as np
import pytest
from conftest import SHAKESPEARE

from charrnn.checkpoint import load_checkpoint
from charrnn.errors import CharrnnError
from charrnn.train import Trainer

TINY_MODEL = dict(cell="lstm", layers=2, hidden=16, embed=8, dropout=0.2)
TINY_TRAIN = dict(batch_size=4, seq_len=16, eval_every=10, seed=3)


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
    assert best.state["best_val_loss"] == min(r["val_loss"] for r in rows)
    last = load_checkpoint(tmp_path / "last.safetensors")
    assert last.state["step"] == 60 and last.optimizer is not None and last.carry is not None


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(corpus, tmp_path):
    run(corpus, tmp_path / "whole", 40)
    run(corpus, tmp_path / "split", 20)
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
    with pytest.raises(CharrnnError, match="--hidden 32 conflicts"):
        Trainer(corpus, tmp_path, {"hidden": 32}, {"max_steps": 20}, resume=tmp_path / "last.safetensors",
                progress=False)


def test_max_epochs_counts_passes_over_the_text(corpus, tmp_path):
    trainer = Trainer(corpus, tmp_path, TINY_MODEL, dict(TINY_TRAIN, max_epochs=0.5), progress=False)
    summary = trainer.run()
    assert summary["step"] == int(np.ceil(0.5 * trainer.batches.steps_per_epoch))
