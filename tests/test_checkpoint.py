import json

import numpy as np
import pytest

from charrnn.checkpoint import Checkpoint, load_checkpoint, read_metadata, save_checkpoint
from charrnn.errors import CharrnnError
from charrnn.model import ModelConfig, ParamBuffer, RecurrentState, init_params
from charrnn.vocab import Vocab


def make_checkpoint(cell="lstm"):
    vocab = Vocab.from_chars("abcdef")
    cfg = ModelConfig(vocab_size=len(vocab), cell=cell, layers=2, hidden=5, embed=4, dropout=0.1)
    params = ParamBuffer(cfg)
    init_params(params, np.random.default_rng(0))
    moments = {slot: params.zeros_like() for slot in ("exp_avg", "exp_avg_sq")}
    moments["exp_avg"].flat[:] = np.random.default_rng(1).standard_normal(params.flat.size)
    moments["exp_avg_sq"].flat[:] = np.random.default_rng(2).random(params.flat.size)
    carry = RecurrentState.zeros(cfg, 3)
    carry.h[:] = 0.5
    return Checkpoint(cfg, vocab, params, moments, {"step": 7, "best_val_loss": 1.5}, {"lr": 0.002}, carry)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_round_trip_is_exact(tmp_path, cell):
    ckpt = make_checkpoint(cell)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, ckpt)
    back = load_checkpoint(path)
    assert back.config == ckpt.config and back.vocab == ckpt.vocab
    assert back.state == ckpt.state and back.train == ckpt.train
    np.testing.assert_array_equal(back.params.flat, ckpt.params.flat)
    for slot in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(back.optimizer[slot].flat, ckpt.optimizer[slot].flat)
    for a, b in zip(back.carry.arrays(), ckpt.carry.arrays()):
        np.testing.assert_array_equal(a, b)


def test_tensor_names_and_metadata(tmp_path):
    from safetensors.numpy import load_file
    from safetensors import safe_open

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_checkpoint())
    names = set(load_file(path))
    assert {"embedding.weight", "rnn.weight_ih_l1", "rnn.bias_hh_l0", "decoder.weight", "decoder.bias"} <= names
    assert all(n.split(".")[0] in ("embedding", "rnn", "decoder", "optimizer", "train") for n in names)
    with safe_open(path, "np") as f:
        meta = json.loads(f.metadata()["charrnn"])
    assert meta["format_version"] == 1
    assert meta["config"]["cell"] == "lstm" and meta["vocab"] == list("abcdef")
    assert meta["state"]["step"] == 7
    assert read_metadata(path)["config"] == meta["config"]


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_checkpoint())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CharrnnError, match="truncated"):
        load_checkpoint(path)


def test_newer_format_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    save_file({"x": np.zeros(1, np.float32)}, path, metadata={"charrnn": json.dumps(
        {"format_version": 99, "config": {}, "vocab": [], "state": {}})})
    with pytest.raises(CharrnnError, match="newer"):
        load_checkpoint(path)


def test_missing_tensor_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_checkpoint())
    tensors = load_file(path)
    with safe_open(path, "np") as f:
        meta = f.metadata()
    del tensors["rnn.weight_hh_l1"]
    save_file(tensors, path, metadata=meta)
    with pytest.raises(CharrnnError, match="rnn.weight_hh_l1"):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    save_file({"x": np.zeros(1, np.float32)}, path)
    with pytest.raises(CharrnnError, match="not a charrnn checkpoint"):
        load_checkpoint(path)
