"""The model's parameter layout, initialisation and recurrent state: plain numpy,
no Numba (network.py runs the model).

Parameters live in one flat buffer with a named view per tensor, named and shaped
exactly as PyTorch names the state dict of a module with attributes `embedding`
(nn.Embedding), `rnn` (nn.LSTM/GRU/RNN) and `decoder` (nn.Linear). Gradients and
Adam's moments use the same layout, so the optimiser works on flat arrays.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from charrnn.config import ModelConfig
from charrnn.errors import CharrnnError, named


def parameter_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in PyTorch's state-dict order."""
    gh = cfg.gates * cfg.hidden
    shapes = [("embedding.weight", (cfg.vocab_size, cfg.embed))]
    for layer in range(cfg.layers):
        d_in = cfg.embed if layer == 0 else cfg.hidden
        shapes += [
            (f"rnn.weight_ih_l{layer}", (gh, d_in)),
            (f"rnn.weight_hh_l{layer}", (gh, cfg.hidden)),
            (f"rnn.bias_ih_l{layer}", (gh,)),
            (f"rnn.bias_hh_l{layer}", (gh,)),
        ]
    shapes += [("decoder.weight", (cfg.vocab_size, cfg.hidden)), ("decoder.bias", (cfg.vocab_size,))]
    return shapes


def parameter_count(cfg: ModelConfig) -> int:
    return sum(math.prod(shape) for _, shape in parameter_shapes(cfg))


class ParamBuffer:
    """A flat array with a named, shaped view per tensor (gradients, Adam's moments,
    and the base of Parameters)."""

    def __init__(self, cfg: ModelConfig, dtype=np.float32, flat: np.ndarray | None = None):
        self.cfg = cfg
        self.shapes = parameter_shapes(cfg)
        size = sum(math.prod(shape) for _, shape in self.shapes)
        if flat is None:
            flat = np.zeros(size, dtype=dtype)
        if flat.shape != (size,):
            raise ValueError(f"flat buffer has shape {flat.shape}, layout needs ({size},)")
        self.flat = flat
        self.views: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in self.shapes:
            n = math.prod(shape)
            self.views[name] = flat[offset:offset + n].reshape(shape)
            offset += n

    @property
    def dtype(self):
        return self.flat.dtype

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(w_ih, w_hh, b_ih, b_hh) of one recurrent layer."""
        v = self.views
        return (v[f"rnn.weight_ih_l{layer}"], v[f"rnn.weight_hh_l{layer}"],
                v[f"rnn.bias_ih_l{layer}"], v[f"rnn.bias_hh_l{layer}"])

    def zeros_like(self) -> "ParamBuffer":
        """A writable buffer of the same layout, all zeros (for gradients or moments)."""
        return ParamBuffer(self.cfg, flat=np.zeros_like(self.flat))


class Parameters(ParamBuffer):
    """The model's weights. Their views are read-only: every change goes through
    write(), which moves `version` on, so that nothing derived from the weights (the
    engine's packed copies) can be used stale.

    While a write() block is open the weights may change at any moment, and
    `writing` says so; `kernel_view` is the same memory, writable, for the engine's
    kernels to read (Numba compiles a read-only array as another type)."""

    def __init__(self, cfg: ModelConfig, dtype=np.float32, flat: np.ndarray | None = None):
        super().__init__(cfg, dtype, flat)
        self.kernel_view = ParamBuffer(cfg, flat=self.flat)
        self.version = 0
        self._writers = 0
        self.flat = self.flat.view()
        self.flat.flags.writeable = False
        for view in self.views.values():
            view.flags.writeable = False

    @property
    def writing(self) -> bool:
        return self._writers > 0

    @contextmanager
    def write(self):
        """Yields a writable ParamBuffer on the same memory; the version moves on as
        the block starts and as it ends."""
        self.version += 1
        self._writers += 1
        try:
            yield self.kernel_view
        finally:
            self._writers -= 1
            self.version += 1


def init_params(params: Parameters, rng: np.random.Generator, forget_bias: float = 0.0) -> None:
    """PyTorch's default initialisation: embedding N(0, 1); recurrent weights and
    biases U(-k, k) with k = 1/sqrt(hidden); decoder U(-k, k) with k = 1/sqrt(fan_in).
    forget_bias (LSTM only) is added to both forget-gate bias blocks."""
    cfg = params.cfg
    with params.write() as w:
        for name, view in w.views.items():
            if name == "embedding.weight":
                view[...] = rng.standard_normal(view.shape)
            else:
                bound = 1.0 / math.sqrt(cfg.hidden)
                view[...] = rng.uniform(-bound, bound, view.shape)
        if cfg.cell == "lstm" and forget_bias:
            h = cfg.hidden
            for layer in range(cfg.layers):
                _, _, b_ih, b_hh = w.layer(layer)
                b_ih[h:2 * h] += forget_bias / 2
                b_hh[h:2 * h] += forget_bias / 2


@contextmanager
def memory_for(cfg: ModelConfig, copies: int = 4):
    """Turn a failed allocation for a model of cfg's size into a one-line error."""
    try:
        yield
    except (MemoryError, ValueError):  # numpy raises ValueError when the size overflows
        n = parameter_count(cfg)
        raise CharrnnError(
            f"a model of {n:,} parameters does not fit in memory (training keeps {copies} float32 copies, "
            f"{copies * 4 * n / 1e9:,.1f} GB); use a smaller {named('hidden')}, {named('layers')} or "
            f"{named('embed')}") from None


@dataclass
class RecurrentState:
    """Hidden state of every layer: h, and c for an LSTM.  h, c: (layers, B, H)."""

    h: np.ndarray
    c: np.ndarray | None = None

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, dtype=np.float32) -> "RecurrentState":
        shape = (cfg.layers, batch, cfg.hidden)
        c = np.zeros(shape, dtype) if cfg.cell == "lstm" else None
        return cls(np.zeros(shape, dtype), c)

    def copy(self) -> "RecurrentState":
        return RecurrentState(self.h.copy(), None if self.c is None else self.c.copy())

    def rows(self, index) -> "RecurrentState":
        """The state of some of the B streams (a copy)."""
        return RecurrentState(np.ascontiguousarray(self.h[:, index]),
                              None if self.c is None else np.ascontiguousarray(self.c[:, index]))

    def arrays(self) -> list[np.ndarray]:
        return [self.h] if self.c is None else [self.h, self.c]


def step_key(seed: int, step: int) -> int:
    """The dropout key of one optimiser step: a function of (seed, step) alone, so a
    resumed run draws exactly the masks the uninterrupted run would have drawn."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0])


def layer_dropout_keys(key: int, layers: int, purpose: int = 0x6D61736B) -> np.ndarray:
    """One independent 64-bit mask key per layer (uint64), derived from one step key;
    each purpose (a 32-bit tag: the outputs' dropout, the weight drop) draws masks
    independent of the others'."""
    return np.random.SeedSequence([key & 0xFFFFFFFFFFFFFFFF, purpose]).generate_state(layers, np.uint64)


def weight_drop_keys(key: int, layers: int) -> np.ndarray:
    """The keys of one step's weight-drop masks, one per layer (see layer_dropout_keys)."""
    return layer_dropout_keys(key, layers, purpose=0x77647270)
