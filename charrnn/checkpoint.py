"""Checkpoints: one .safetensors file holding everything needed to sample or resume.

Tensors:
  embedding.weight, rnn.weight_ih_l{k}, rnn.weight_hh_l{k}, rnn.bias_ih_l{k},
  rnn.bias_hh_l{k}, decoder.weight, decoder.bias  -- the model, as PyTorch names it
  optimizer.exp_avg.<name>, optimizer.exp_avg_sq.<name>  -- Adam's moments
  train.state.h, train.state.c  -- hidden state carried into the next batch
Header metadata key "charrnn": JSON with format_version, config, vocab, state, train.

No math here: reading, checking and writing files only. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn import __version__
from charrnn.errors import CharrnnError
from charrnn.fileio import atomic_write_bytes
from charrnn.model import ModelConfig, ParamBuffer, RecurrentState, parameter_shapes
from charrnn.vocab import Vocab

FORMAT_VERSION = 1
METADATA_KEY = "charrnn"
OPTIMIZER_SLOTS = ("exp_avg", "exp_avg_sq")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class Checkpoint:
    """A model and, for resuming, its optimiser moments and training state."""

    config: ModelConfig
    vocab: Vocab
    params: ParamBuffer
    optimizer: dict[str, ParamBuffer] | None = None  # slot name -> moments
    state: dict = field(default_factory=dict)  # step, data position, best loss, ...
    train: dict = field(default_factory=dict)  # the training settings
    carry: RecurrentState | None = None  # hidden state for the next training batch


def save_checkpoint(path, ckpt: Checkpoint) -> None:
    """Write ckpt to path atomically (temporary file, then rename)."""
    from safetensors.numpy import save

    tensors = {name: np.ascontiguousarray(view, dtype=np.float32) for name, view in ckpt.params.views.items()}
    if ckpt.optimizer is not None:
        for slot in OPTIMIZER_SLOTS:
            for name, view in ckpt.optimizer[slot].views.items():
                tensors[f"optimizer.{slot}.{name}"] = np.ascontiguousarray(view, dtype=np.float32)
    if ckpt.carry is not None:
        tensors["train.state.h"] = np.ascontiguousarray(ckpt.carry.h, dtype=np.float32)
        if ckpt.carry.c is not None:
            tensors["train.state.c"] = np.ascontiguousarray(ckpt.carry.c, dtype=np.float32)
    meta = {
        "format_version": FORMAT_VERSION,
        "charrnn_version": __version__,
        "config": ckpt.config.to_dict(),
        "vocab": ckpt.vocab.chars,
        "state": ckpt.state,
        "train": ckpt.train,
    }
    data = save(tensors, metadata={METADATA_KEY: json.dumps(meta, ensure_ascii=False)})
    atomic_write_bytes(path, data)


def read_header(path) -> tuple[dict, bytes]:
    """The safetensors JSON header of a file and the file's bytes, with one-line
    errors for files that are missing, truncated or of another kind."""
    p = Path(path)
    if p.is_dir():
        raise CharrnnError(f"{p} is a directory; give a .safetensors checkpoint file "
                           f"(such as {p / 'best.safetensors'})")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CharrnnError(f"{p}: no such checkpoint file") from None
    except OSError as e:
        raise CharrnnError(f"cannot read checkpoint {p}: {e.strerror or e}") from None
    if len(data) < 8:
        raise CharrnnError(f"{p} is not a checkpoint (too short to be a safetensors file)")
    (n,) = struct.unpack("<Q", data[:8])
    if data[8:9] != b"{" or n > _MAX_HEADER:
        raise CharrnnError(f"{p} is not a safetensors checkpoint")
    if 8 + n > len(data):
        raise CharrnnError(f"{p} is truncated (header says {8 + n} bytes or more, file has {len(data)})")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CharrnnError(f"{p} is not a safetensors checkpoint (unreadable header)") from None
    if not isinstance(header, dict):
        raise CharrnnError(f"{p} is not a safetensors checkpoint (unreadable header)")
    end = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            ok = 0 <= start <= stop and isinstance(start, int) and isinstance(stop, int)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CharrnnError(f"{p} is not a valid safetensors file (bad entry for tensor {name!r})")
        if end + stop > len(data):
            raise CharrnnError(f"{p} is truncated (tensor {name!r} runs past the end of the file)")
    return header, data


def read_metadata(path) -> dict:
    """The charrnn metadata of a checkpoint, checked for version and structure."""
    header, _ = read_header(path)
    return _metadata(path, header)


def _metadata(path, header: dict) -> dict:
    metadata = header.get("__metadata__")
    raw = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if raw is None:
        raise CharrnnError(f"{path} is a safetensors file but not a charrnn checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, TypeError, RecursionError):
        raise CharrnnError(f"{path}: the charrnn metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CharrnnError(f"{path}: the charrnn metadata is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CharrnnError(f"{path}: the charrnn metadata has no format_version")
    if version > FORMAT_VERSION:
        raise CharrnnError(f"{path} has checkpoint format {version}, newer than this charrnn "
                           f"({__version__}) reads (format {FORMAT_VERSION}); upgrade charrnn")
    for key, kind in (("config", dict), ("vocab", list), ("state", dict)):
        if not isinstance(meta.get(key), kind):
            raise CharrnnError(f"{path}: the charrnn metadata has no valid '{key}'")
    if not isinstance(meta.get("train", {}), dict):
        raise CharrnnError(f"{path}: the charrnn metadata has no valid 'train'")
    return meta


def load_checkpoint(path, with_training_state: bool = True) -> Checkpoint:
    """Read and check a checkpoint. Every problem is a one-line CharrnnError."""
    from safetensors.numpy import load

    header, data = read_header(path)
    meta = _metadata(path, header)
    try:
        vocab = Vocab(meta["vocab"])
    except CharrnnError as e:
        raise CharrnnError(f"{path}: bad vocabulary: {e}") from None
    cfg_dict = dict(meta["config"])
    cfg_dict.setdefault("vocab_size", len(vocab))
    try:
        cfg = ModelConfig.from_dict(cfg_dict)
    except (CharrnnError, TypeError) as e:
        raise CharrnnError(f"{path}: bad model config: {e}") from None
    if cfg.vocab_size != len(vocab):
        raise CharrnnError(f"{path}: config says {cfg.vocab_size} characters, vocabulary has {len(vocab)}")
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise CharrnnError(f"{path} is not a valid safetensors file ({_first_line(e)})") from None

    params = ParamBuffer(cfg, np.float32)
    _fill(params, tensors, "", path)
    ckpt = Checkpoint(cfg, vocab, params, state=meta["state"], train=meta.get("train", {}))
    if not with_training_state:
        return ckpt
    if all(f"optimizer.{slot}.{name}" in tensors for slot in OPTIMIZER_SLOTS for name, _ in params.shapes):
        ckpt.optimizer = {}
        for slot in OPTIMIZER_SLOTS:
            ckpt.optimizer[slot] = params.zeros_like()
            _fill(ckpt.optimizer[slot], tensors, f"optimizer.{slot}.", path)
    if "train.state.h" in tensors:
        h = _tensor(tensors, "train.state.h", None, path)
        c = _tensor(tensors, "train.state.c", h.shape, path) if cfg.cell == "lstm" else None
        if h.ndim != 3 or h.shape[0] != cfg.layers or h.shape[2] != cfg.hidden:
            raise CharrnnError(f"{path}: tensor 'train.state.h' has shape {h.shape}, "
                               f"expected ({cfg.layers}, batch, {cfg.hidden})")
        ckpt.carry = RecurrentState(h, c)
    return ckpt


def _tensor(tensors: dict, name: str, shape, path) -> np.ndarray:
    if name not in tensors:
        raise CharrnnError(f"{path}: missing tensor {name!r}")
    t = tensors[name]
    if t.dtype != np.float32:
        raise CharrnnError(f"{path}: tensor {name!r} is {t.dtype}, expected float32")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CharrnnError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return np.array(t, dtype=np.float32)


def _fill(buffer: ParamBuffer, tensors: dict, prefix: str, path) -> None:
    for name, shape in parameter_shapes(buffer.cfg):
        buffer.views[name][...] = _tensor(tensors, prefix + name, shape, path)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
