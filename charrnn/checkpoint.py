"""Checkpoints: one .safetensors file holding everything needed to sample or resume.

Tensors:
  embedding.weight, rnn.weight_ih_l{k}, rnn.weight_hh_l{k}, rnn.bias_ih_l{k},
  rnn.bias_hh_l{k}, decoder.weight, decoder.bias  -- the model, as PyTorch names it
  optimizer.exp_avg.<name>, optimizer.exp_avg_sq.<name>  -- Adam's moments
  train.raw.<name>  -- with a weight average (ema), the weights themselves (the model's
                       names then hold the average, what is evaluated and sampled)
  lines.train, lines.val  -- line mode: hashes of the training and validation lines
  train.state.h, train.state.c  -- hidden state carried into the next batch
Header metadata key "charrnn": JSON with format_version, config, vocab, state, train.

No math here: reading, checking and writing files only. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import reprlib
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from charrnn import __version__
from charrnn.config import DATA_SETTINGS, ModelConfig
from charrnn.errors import CharrnnError
from charrnn.fileio import atomic_write_bytes
from charrnn.model import ParamBuffer, Parameters, RecurrentState, parameter_shapes
from charrnn.vocab import Vocab

# 2: line mode (config "lines", tensors lines.train and lines.val) and fine-tuning
# (train "init"); an older charrnn refuses it, so it never misreads a line-mode model.
FORMAT_VERSION = 2
METADATA_KEY = "charrnn"
OPTIMIZER_SLOTS = ("exp_avg", "exp_avg_sq")
RAW = "train.raw."  # with a weight average, the model's names hold the average and these the weights
_MAX_HEADER = 100 * 1024 * 1024


@dataclass
class TrainingState:
    """How far a run has come; saved in every checkpoint. elapsed (seconds of
    training, across resumes) is left out of checkpoints of runs without a time
    budget, whose files are then bit for bit the same however often they resumed."""

    step: int | None = None  # optimiser steps taken; None in a file that cannot resume
    elapsed: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    val_loss: float | None = None  # of the last evaluation; None after an interrupted one
    since_best: int | None = None  # evaluations since the best one (for patience)
    chosen: str | None = None  # the settings charrnn chose for the budget, and why (autoconfig)
    steps_per_epoch: int | None = None
    corpus_sha256: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not (k == "elapsed" and v is None)}

    @classmethod
    def from_dict(cls, d: dict, path=None, strict: bool = True) -> "TrainingState":
        """The state a checkpoint saved. strict (to resume): every value is checked and
        a bad one is refused, naming it; else a bad or unknown value is passed over."""
        known = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            ok, what = _STATE_RULES[f.name]
            if ok(d[f.name]):
                known[f.name] = d[f.name]
            elif strict:
                raise CharrnnError(f"{path}: the training state's {f.name!r} is {_short(d[f.name])}, "
                                   f"expected {what}")
        return cls(**known)


@dataclass
class Checkpoint:
    """A model and, for resuming, its optimiser moments and training state."""

    config: ModelConfig
    vocab: Vocab
    params: Parameters
    optimizer: dict[str, ParamBuffer] | None = None  # slot name -> moments
    state: TrainingState = field(default_factory=TrainingState)
    train: dict = field(default_factory=dict)  # the training settings (TrainConfig.to_dict())
    carry: RecurrentState | None = None  # hidden state for the next training batch
    format_version: int = 0  # of the file it was read from
    charrnn_version: str | None = None  # that wrote it
    resumable: bool = False  # the file holds optimiser moments (read only with the training state)
    lines: tuple[np.ndarray, np.ndarray] | None = None  # line mode: hashes of the training and validation lines
    raw: Parameters | None = None  # with a weight average (ema): the weights themselves; params is the average


def save_checkpoint(path, ckpt: Checkpoint) -> None:
    """Write ckpt to path atomically (temporary file, then rename)."""
    from safetensors.numpy import save

    tensors = {name: np.ascontiguousarray(view, dtype=np.float32) for name, view in ckpt.params.views.items()}
    if ckpt.optimizer is not None:
        for slot in OPTIMIZER_SLOTS:
            for name, view in ckpt.optimizer[slot].views.items():
                tensors[f"optimizer.{slot}.{name}"] = np.ascontiguousarray(view, dtype=np.float32)
    if ckpt.raw is not None:
        for name, view in ckpt.raw.views.items():
            tensors[f"{RAW}{name}"] = np.ascontiguousarray(view, dtype=np.float32)
    if ckpt.lines is not None:
        tensors["lines.train"], tensors["lines.val"] = (np.ascontiguousarray(h, np.uint64) for h in ckpt.lines)
    if ckpt.carry is not None:
        tensors["train.state.h"] = np.ascontiguousarray(ckpt.carry.h, dtype=np.float32)
        if ckpt.carry.c is not None:
            tensors["train.state.c"] = np.ascontiguousarray(ckpt.carry.c, dtype=np.float32)
    meta = {
        "format_version": FORMAT_VERSION,
        "charrnn_version": __version__,
        "config": ckpt.config.to_dict(),
        "vocab": ckpt.vocab.chars,
        "state": ckpt.state.to_dict(),
        "train": ckpt.train,
    }
    data = save(tensors, metadata={METADATA_KEY: json.dumps(meta, ensure_ascii=False)})
    atomic_write_bytes(path, data)


def read_header(path) -> tuple[dict, bytes, int]:
    """The safetensors JSON header of a file, the file's bytes and where the tensor
    data starts, with one-line errors for files that are missing, truncated or of
    another kind. Every tensor's data_offsets are checked to lie inside the file."""
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
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError includes JSONDecodeError
        raise CharrnnError(f"{p} is not a safetensors checkpoint (unreadable header)") from None
    if not isinstance(header, dict):
        raise CharrnnError(f"{p} is not a safetensors checkpoint (unreadable header)")
    end = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            ok = _is_count(start) and _is_count(stop) and start <= stop
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CharrnnError(f"{p} is not a valid safetensors file (bad entry for tensor {name!r})")
        if end + stop > len(data):
            raise CharrnnError(f"{p} is truncated (tensor {name!r} runs past the end of the file)")
    return header, data, end


def read_metadata(path) -> dict:
    """The charrnn metadata of a checkpoint, checked for version and structure."""
    header, _, _ = read_header(path)
    return _metadata(path, header)


def _metadata(path, header: dict) -> dict:
    metadata = header.get("__metadata__")
    raw = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if raw is None:
        raise CharrnnError(f"{path} is a safetensors file but not a charrnn checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        raise CharrnnError(f"{path}: the charrnn metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CharrnnError(f"{path}: the charrnn metadata is not a JSON object")
    version = meta.get("format_version")
    if not _is_count(version):
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


def _model_of(path, meta: dict) -> tuple[Vocab, ModelConfig]:
    """The vocabulary and model config of checkpoint metadata (read_metadata's)."""
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
    return vocab, cfg


def same_run(path, meta: dict, ckpt: Checkpoint) -> bool:
    """Whether checkpoint metadata (read_metadata's, of path) is of ckpt's run: the same
    model, vocabulary and corpus, and the settings a resume cannot change (the data each
    step sees and the seed: DATA_SETTINGS)."""
    try:
        vocab, cfg = _model_of(path, meta)
    except CharrnnError:
        return False
    train = meta.get("train", {})
    same_data = all(train.get(name) == ckpt.train.get(name) for name in DATA_SETTINGS)
    same_text = meta["state"].get("corpus_sha256") == ckpt.state.corpus_sha256
    return vocab == ckpt.vocab and cfg == ckpt.config and same_text and same_data


def load_checkpoint(path, with_training_state: bool = True) -> Checkpoint:
    """Read and check a checkpoint. Every problem is a one-line CharrnnError.

    Every tensor is checked against the header (present, float32, the shape the
    config implies) before anything is allocated, so a damaged or hostile config
    cannot ask for more memory than the file itself holds."""
    header, data, data_start = read_header(path)
    meta = _metadata(path, header)
    vocab, cfg = _model_of(path, meta)
    tensors = _Tensors(path, header, data, data_start)
    shapes = parameter_shapes(cfg)
    tensors.check(shapes)
    params = Parameters(cfg, np.float32)
    with params.write() as w:
        tensors.fill(w, "")
    ckpt = Checkpoint(cfg, vocab, params, state=TrainingState.from_dict(meta["state"], path, with_training_state),
                      train=meta.get("train", {}), format_version=meta["format_version"],
                      charrnn_version=meta.get("charrnn_version"),
                      resumable=f"optimizer.{OPTIMIZER_SLOTS[0]}.embedding.weight" in header,
                      lines=tensors.line_hashes())
    if not with_training_state:
        return ckpt
    moments = [(f"optimizer.{slot}.{name}", shape) for slot in OPTIMIZER_SLOTS for name, shape in shapes]
    if any(name in header for name, _ in moments):
        tensors.check(moments)
        ckpt.optimizer = {}
        for slot in OPTIMIZER_SLOTS:
            ckpt.optimizer[slot] = params.zeros_like()
            tensors.fill(ckpt.optimizer[slot], f"optimizer.{slot}.")
    if f"{RAW}embedding.weight" in header:
        tensors.check([(RAW + name, shape) for name, shape in shapes])
        ckpt.raw = Parameters(cfg, np.float32)
        with ckpt.raw.write() as w:
            tensors.fill(w, RAW)
    if "train.state.h" in header:
        shape = header["train.state.h"].get("shape") if isinstance(header["train.state.h"], dict) else None
        if not (isinstance(shape, list) and len(shape) == 3 and shape[0] == cfg.layers
                and _is_count(shape[1]) and shape[2] == cfg.hidden):
            raise CharrnnError(f"{path}: tensor 'train.state.h' has shape {_short(shape)}, "
                               f"expected ({cfg.layers}, batch, {cfg.hidden})")
        names = ["train.state.h", "train.state.c"] if cfg.cell == "lstm" else ["train.state.h"]
        tensors.check([(name, tuple(shape)) for name in names])
        ckpt.carry = RecurrentState(*(tensors.read(name) for name in names))
    return ckpt


class _Tensors:
    """The float32 tensors of a safetensors file, read straight from its checked bytes."""

    def __init__(self, path, header: dict, data: bytes, data_start: int):
        self.path, self.header, self.data, self.data_start = path, header, data, data_start

    def check(self, expected) -> None:
        """Every (name, shape) is present, float32, of that shape and size."""
        for name, shape in expected:
            info = self.header.get(name)
            if name == "__metadata__" or not isinstance(info, dict):
                raise CharrnnError(f"{self.path}: missing tensor {name!r}")
            if info.get("dtype") != "F32":
                raise CharrnnError(f"{self.path}: tensor {name!r} is {_short(info.get('dtype'))}, expected F32 (float32)")
            got = info.get("shape")
            valid = isinstance(got, list) and all(_is_count(d) for d in got)
            if not valid or tuple(got) != tuple(shape):
                shown = tuple(got) if valid else _short(got)
                raise CharrnnError(f"{self.path}: tensor {name!r} has shape {shown}, expected {tuple(shape)}")
            start, stop = info["data_offsets"]
            if stop - start != 4 * math.prod(shape):
                raise CharrnnError(f"{self.path}: tensor {name!r} holds {stop - start} bytes, "
                                   f"its shape {tuple(shape)} needs {4 * math.prod(shape)}")

    def read(self, name: str, dtype: str = "<f4") -> np.ndarray:
        """A copy of a tensor that check() has passed."""
        info = self.header[name]
        start, stop = info["data_offsets"]
        count = (stop - start) // np.dtype(dtype).itemsize
        flat = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.data_start + start)
        return flat.astype(np.dtype(dtype).newbyteorder("=")).reshape(info["shape"])

    def line_hashes(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Line mode's hashes of the training and validation lines (uint64), if the file has them."""
        names = ("lines.train", "lines.val")
        if not any(name in self.header for name in names):
            return None
        for name in names:
            info = self.header.get(name)
            shape = info.get("shape") if isinstance(info, dict) else None
            if not (isinstance(info, dict) and info.get("dtype") == "U64" and isinstance(shape, list)
                    and len(shape) == 1 and _is_count(shape[0])):
                raise CharrnnError(f"{self.path}: tensor {name!r} is missing or not a list of uint64 line hashes")
            start, stop = info["data_offsets"]
            if stop - start != 8 * shape[0]:
                raise CharrnnError(f"{self.path}: tensor {name!r} holds {stop - start} bytes, its shape needs "
                                   f"{8 * shape[0]}")
        return tuple(self.read(name, "<u8") for name in names)

    def fill(self, buffer: ParamBuffer, prefix: str) -> None:
        for name, view in buffer.views.items():
            view[...] = self.read(prefix + name)


def _is_count(v) -> bool:
    """A non-negative int (JSON's true/false are not counts)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(value, limit: int = 40) -> str:
    """repr(value), cut short for a one-line message (reprlib bounds the work too)."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# The training state a resumable checkpoint records: key -> (check, what it must be).
_STATE_RULES = {
    "step": (_is_count, "a non-negative integer"),
    "best_step": (lambda v: v is None or _is_count(v), "null or a non-negative integer"),
    "best_val_loss": (lambda v: v is None or _is_finite(v), "null or a finite number"),
    "val_loss": (lambda v: v is None or _is_finite(v), "null or a finite number"),
    "elapsed": (lambda v: _is_finite(v) and v >= 0, "a non-negative number of seconds"),
    "corpus_sha256": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "steps_per_epoch": (lambda v: v is None or (_is_count(v) and v > 0), "null or a positive integer"),
    "since_best": (lambda v: v is None or _is_count(v), "null or a non-negative integer"),
    "chosen": (lambda v: v is None or isinstance(v, str), "null or a string"),
}
