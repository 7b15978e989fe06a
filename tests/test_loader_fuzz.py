"""Random, mutated and structurally odd files fed to the checkpoint and vocabulary
loaders: the only exception that may come out is CharrnnError."""

import functools
import json
import os
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_checkpoint import make_checkpoint

from charrnn.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from charrnn.errors import CharrnnError
from charrnn.config import TrainConfig
from charrnn.vocab import Vocab

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@functools.cache
def valid_checkpoint() -> bytes:
    """A small, complete checkpoint's bytes (not a fixture: hypothesis would print it)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "valid.safetensors")
        save_checkpoint(path, make_checkpoint("lstm"))
        with open(path, "rb") as f:
            return f.read()


def load_all_ways(path):
    """Everything that reads a checkpoint; each either works or raises CharrnnError."""
    for reader in (read_metadata, lambda p: load_checkpoint(p, with_training_state=False), load_checkpoint):
        try:
            ckpt = reader(path)
        except CharrnnError as e:
            assert "\n" not in str(e)
            continue
        if hasattr(ckpt, "train"):
            try:
                TrainConfig.from_dict(ckpt.train)  # as a resume reads the training settings
            except CharrnnError:
                pass


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes(scratch, data):
    path = scratch / "random.safetensors"
    path.write_bytes(data)
    with pytest.raises(CharrnnError):
        load_checkpoint(path)


@FUZZ
@given(st.data())
def test_mutated_checkpoints(scratch, data):
    valid = valid_checkpoint()
    blob = bytearray(valid)
    (header_len,) = struct.unpack("<Q", valid[:8])
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "flip", "flip", "cut", "insert", "delete"]))
        # Mostly in the header, where the structure is.
        limit = len(blob) if data.draw(st.integers(0, 4)) == 0 else min(len(blob), 8 + header_len)
        at = data.draw(st.integers(0, max(0, limit - 1)))
        if kind == "flip" and blob:
            blob[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del blob[at:]
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del blob[at:at + data.draw(st.integers(1, 16))]
    path = scratch / "mutated.safetensors"
    path.write_bytes(bytes(blob))
    load_all_ways(path)


def _rebuild(valid: bytes, edit) -> bytes:
    """valid with its safetensors header passed through edit(header, meta)."""
    (n,) = struct.unpack("<Q", valid[:8])
    header = json.loads(valid[8:8 + n])
    meta = json.loads(header["__metadata__"]["charrnn"])
    edit(header, meta)
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"]["charrnn"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + valid[8 + n:]


@FUZZ
@given(where=st.sampled_from(["format_version", "config", "vocab", "state", "train", "config.hidden",
                              "config.cell", "config.dropout", "state.step", "state.best_val_loss",
                              "state.elapsed", "train.batch_size", "train.lr", "train.max_steps"]),
       value=json_values)
def test_odd_metadata_values(scratch, where, value):
    def edit(header, meta):
        keys = where.split(".")
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    path = scratch / "odd_meta.safetensors"
    path.write_bytes(_rebuild(valid_checkpoint(), edit))
    load_all_ways(path)


@FUZZ
@given(tensor=st.sampled_from(["embedding.weight", "rnn.weight_hh_l1", "decoder.bias",
                               "optimizer.exp_avg.decoder.bias", "train.state.h", "train.state.c"]),
       field=st.sampled_from(["dtype", "shape", "data_offsets", None]), value=json_values)
def test_odd_tensor_entries(scratch, tensor, field, value):
    def edit(header, meta):
        if field is None:
            header[tensor] = value
        else:
            header[tensor][field] = value

    path = scratch / "odd_tensor.safetensors"
    path.write_bytes(_rebuild(valid_checkpoint(), edit))
    load_all_ways(path)


@FUZZ
@given(value=json_values)
def test_odd_metadata_container(scratch, value):
    path = scratch / "odd_container.safetensors"
    path.write_bytes(_rebuild(valid_checkpoint(), lambda header, meta: header.__setitem__("__metadata__", value)))
    load_all_ways(path)


def test_the_fuzzed_checkpoint_itself_loads(scratch):
    path = scratch / "plain.safetensors"
    path.write_bytes(_rebuild(valid_checkpoint(), lambda header, meta: None))
    np.testing.assert_array_equal(load_checkpoint(path).params.flat, make_checkpoint("lstm").params.flat)


VALID_VOCAB = json.dumps({"format": "charrnn-vocab", "version": 1, "chars": list("ab\n é漢🙂")},
                         ensure_ascii=False).encode()


def load_vocab(path):
    try:
        Vocab.load(path)
    except CharrnnError as e:
        assert "\n" not in str(e)


@FUZZ
@given(data=st.binary(max_size=600))
def test_vocab_random_bytes(scratch, data):
    path = scratch / "vocab.json"
    path.write_bytes(data)
    load_vocab(path)


@FUZZ
@given(st.data())
def test_vocab_mutated(scratch, data):
    blob = bytearray(VALID_VOCAB)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob) - 1)) if blob else 0
        if data.draw(st.booleans()) and blob:
            blob[at] = data.draw(st.integers(0, 255))
        else:
            del blob[at:at + data.draw(st.integers(1, 8))]
    path = scratch / "vocab.json"
    path.write_bytes(bytes(blob))
    load_vocab(path)


@FUZZ
@given(doc=st.fixed_dictionaries({"format": st.just("charrnn-vocab") | json_values,
                                  "version": st.just(1) | json_values,
                                  "chars": st.lists(st.text(max_size=2), max_size=6) | json_values}))
def test_vocab_odd_json(scratch, doc):
    path = scratch / "vocab.json"
    path.write_text(json.dumps(doc))
    load_vocab(path)
