import json
import re

import numpy as np
import pytest

from charrnn.checkpoint import Checkpoint, TrainingState, load_checkpoint, read_metadata, save_checkpoint
from charrnn.errors import CharrnnError
from charrnn.config import ModelConfig
from charrnn.model import Parameters, RecurrentState, init_params
from charrnn.vocab import Vocab


def make_checkpoint(cell="lstm"):
    vocab = Vocab.from_chars("abcdef")
    cfg = ModelConfig(vocab_size=len(vocab), cell=cell, layers=2, hidden=5, embed=4, dropout=0.1)
    params = Parameters(cfg)
    init_params(params, np.random.default_rng(0))
    moments = {slot: params.zeros_like() for slot in ("exp_avg", "exp_avg_sq")}
    moments["exp_avg"].flat[:] = np.random.default_rng(1).standard_normal(params.flat.size)
    moments["exp_avg_sq"].flat[:] = np.random.default_rng(2).random(params.flat.size)
    carry = RecurrentState.zeros(cfg, 3)
    carry.h[:] = 0.5
    return Checkpoint(cfg, vocab, params, moments, TrainingState(step=7, best_val_loss=1.5), {"lr": 0.002}, carry)


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
    assert meta["format_version"] == 2
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


def rewrite_checkpoint(src, dst, edit_meta=None, edit_tensors=None):
    """Copy a checkpoint, passing its charrnn metadata and its tensors through edits."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    tensors = load_file(src)
    with safe_open(src, "np") as f:
        meta = json.loads(f.metadata()["charrnn"])
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, dst, metadata={"charrnn": json.dumps(meta)})
    return dst


@pytest.mark.parametrize("name", ["rnn.weight_hh_l1", "optimizer.exp_avg_sq.decoder.bias"])
def test_missing_tensor_is_named(tmp_path, name):
    # Also a partial optimiser state: it is named, not taken for no state at all.
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_checkpoint())
    rewrite_checkpoint(path, path, edit_tensors=lambda t: t.pop(name))
    with pytest.raises(CharrnnError, match=f"missing tensor '{re.escape(name)}'"):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "c.safetensors"
    save_file({"x": np.zeros(1, np.float32)}, path)
    with pytest.raises(CharrnnError, match="not a charrnn checkpoint"):
        load_checkpoint(path)


def test_a_config_asking_for_a_huge_model_is_refused_before_allocating(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_checkpoint())
    rewrite_checkpoint(path, path, edit_meta=lambda m: m["config"].update(hidden=10**12))
    with pytest.raises(CharrnnError, match=r"'embedding.weight'|has shape .* expected"):
        load_checkpoint(path)


@pytest.mark.parametrize("key,value,message", [
    ("step", -1, "'step' is -1, expected a non-negative integer"),
    ("step", True, "'step' is True"),
    ("best_val_loss", "low", "'best_val_loss' is 'low', expected null or a finite number"),
    ("elapsed", [1], "'elapsed' is [1]"),
])
def test_a_damaged_training_state_is_named(tmp_path, key, value, message):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_checkpoint())
    rewrite_checkpoint(path, path, edit_meta=lambda m: m["state"].update({key: value}))
    with pytest.raises(CharrnnError, match=re.escape(message)):
        load_checkpoint(path)
    load_checkpoint(path, with_training_state=False)  # sampling does not need it


def test_tensor_whose_bytes_do_not_match_its_shape(tmp_path):
    import struct

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_checkpoint())
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    start, stop = header["decoder.bias"]["data_offsets"]
    header["decoder.bias"]["data_offsets"] = [start, stop - 4]
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(CharrnnError, match="'decoder.bias' holds 20 bytes, its shape \\(6,\\) needs 24"):
        load_checkpoint(path)


def test_a_format_1_checkpoint_from_before_line_mode_loads(tmp_path):
    """Format 1 had no line mode: its config lacks "lines" and its training settings "init"."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_checkpoint())

    def as_format_1(meta):
        meta["format_version"] = 1
        del meta["config"]["lines"]

    rewrite_checkpoint(path, path, edit_meta=as_format_1)
    ckpt = load_checkpoint(path)
    assert ckpt.format_version == 1 and ckpt.config.lines is False and ckpt.lines is None


def test_line_hashes_round_trip(tmp_path):
    ckpt = make_checkpoint()
    ckpt.lines = (np.array([1, 5, 2**64 - 1], np.uint64), np.array([7], np.uint64))
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, ckpt)
    back = load_checkpoint(path)
    for a, b in zip(back.lines, ckpt.lines):
        assert a.dtype == np.uint64 and (a == b).all()
