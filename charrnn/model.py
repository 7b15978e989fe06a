"""The network: configuration, parameter layout, initialisation, loss and gradients.

Parameters live in one flat buffer with a named view per tensor, named and shaped
exactly as PyTorch names the state dict of a module with attributes `embedding`
(nn.Embedding), `rnn` (nn.LSTM/GRU/RNN) and `decoder` (nn.Linear). Gradients and
Adam's moments use the same layout, so the optimiser works on flat arrays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from charrnn.errors import CharrnnError

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@dataclass(frozen=True)
class ModelConfig:
    """What defines a model's shape; saved in every checkpoint."""

    vocab_size: int
    cell: str = "lstm"
    layers: int = 2
    hidden: int = 256
    embed: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        if self.cell not in GATES:
            raise CharrnnError(f"unknown cell {self.cell!r}: choose one of {', '.join(GATES)}")
        for name in ("vocab_size", "layers", "hidden", "embed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CharrnnError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise CharrnnError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CharrnnError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


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


class ParamBuffer:
    """A flat array with a named, shaped view per tensor.

    `version` counts changes: whoever changes the values in place calls touch(), and
    a Network repacks its weights when it sees a new version."""

    def __init__(self, cfg: ModelConfig, dtype=np.float32, flat: np.ndarray | None = None):
        self.cfg = cfg
        self.version = 0
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

    def touch(self) -> None:
        """Record that the values changed."""
        self.version += 1

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(w_ih, w_hh, b_ih, b_hh) of one recurrent layer."""
        v = self.views
        return (v[f"rnn.weight_ih_l{layer}"], v[f"rnn.weight_hh_l{layer}"],
                v[f"rnn.bias_ih_l{layer}"], v[f"rnn.bias_hh_l{layer}"])

    def zeros_like(self) -> "ParamBuffer":
        return ParamBuffer(self.cfg, flat=np.zeros_like(self.flat))

    def astype(self, dtype) -> "ParamBuffer":
        return ParamBuffer(self.cfg, flat=self.flat.astype(dtype))


def init_params(params: ParamBuffer, rng: np.random.Generator, forget_bias: float = 0.0) -> None:
    """PyTorch's default initialisation: embedding N(0, 1); recurrent weights and
    biases U(-k, k) with k = 1/sqrt(hidden); decoder U(-k, k) with k = 1/sqrt(fan_in).
    forget_bias (LSTM only) is added to both forget-gate bias blocks."""
    cfg = params.cfg
    for name, view in params.views.items():
        if name == "embedding.weight":
            view[...] = rng.standard_normal(view.shape)
        else:
            bound = 1.0 / math.sqrt(cfg.hidden)
            view[...] = rng.uniform(-bound, bound, view.shape)
    if cfg.cell == "lstm" and forget_bias:
        h = cfg.hidden
        for layer in range(cfg.layers):
            _, _, b_ih, b_hh = params.layer(layer)
            b_ih[h:2 * h] += forget_bias / 2
            b_hh[h:2 * h] += forget_bias / 2


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


def layer_dropout_keys(key: int, layers: int) -> np.ndarray:
    """One independent 64-bit mask key per layer (uint64), derived from one step key."""
    return np.random.SeedSequence([key & 0xFFFFFFFFFFFFFFFF, 0x6D61736B]).generate_state(layers, np.uint64)


class Network:
    """The model's forward and backward passes over (T, B) batches of character ids."""

    def __init__(self, cfg: ModelConfig, params: ParamBuffer):
        self.cfg = cfg
        self.params = params
        self._workspaces: dict[tuple, object] = {}
        self._packed = None
        self._last = None  # (workspace, ids, dropout used) of the last forward, for backward (which clears it)

    def _workspace(self, T: int, B: int, dropout: bool):
        from charrnn.engine import Workspace

        key = (T, B, dropout)
        if key not in self._workspaces:
            self._workspaces[key] = Workspace(self.cfg, T, B, self.params.dtype, dropout)
        return self._workspaces[key]

    def packed(self, nthreads: int):
        """The weights packed for the kernels, rebuilt when the parameters change."""
        from charrnn.engine import PackedWeights

        if self._packed is None or self._packed.version != self.params.version:
            self._packed = PackedWeights(self.cfg, self.params, nthreads)
        return self._packed

    def forward(self, ids: np.ndarray, state: RecurrentState, dropout_key: int | None = None):
        """Logits for every position, and the state after the last step.

        ids: (T, B) ints; state: initial state of the B streams (not modified).
        dropout_key: None for evaluation; an integer key for a training pass, which
        then applies dropout (if the config has any) with masks derived from the key.
        Returns logits: (T * B, V), row t * B + b for stream b at step t, and the new state.
        """
        from charrnn.engine import layer_forward, product, threads
        from charrnn.kernels.dropout import apply_mask, dropout_mask
        from charrnn.kernels.linear import gather_rows, set_rows

        cfg, nthreads = self.cfg, threads()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        T, B = ids.shape
        use_dropout = dropout_key is not None and cfg.dropout > 0.0
        ws = self._workspace(T, B, use_dropout)
        packed = self.packed(nthreads)
        keys = layer_dropout_keys(dropout_key, cfg.layers) if use_dropout else None
        below = None
        for layer, (buf, weights) in enumerate(zip(ws.layers, packed.layers)):
            if layer == 0:
                gather_rows(buf.input_side(), packed.table, ids.reshape(-1), nthreads)
            else:
                set_rows(buf.input_side(), weights.bias, nthreads)
                product(buf.input_side(), below.reshape(T * B, cfg.hidden), False, weights.ih_t, nthreads)
            c0 = state.c[layer] if state.c is not None else None
            layer_forward(cfg.cell, buf, weights, state.h[layer], c0, nthreads)
            if use_dropout:
                dropout_mask(buf.mask, keys[layer], cfg.dropout, nthreads)
                apply_mask(buf.ys, buf.hs, buf.mask, nthreads)
            below = buf.output
        set_rows(ws.logits, self.params["decoder.bias"], nthreads)
        product(ws.logits, below.reshape(T * B, cfg.hidden), False, packed.dec_t, nthreads)
        new_state = RecurrentState(
            np.stack([buf.hs_buf[T] for buf in ws.layers]),
            np.stack([buf.cs_buf[T] for buf in ws.layers]) if cfg.cell == "lstm" else None)
        self._last = (ws, ids, use_dropout)
        return ws.logits, new_state

    def backward(self, dlogits: np.ndarray, grads: ParamBuffer,
                 dstate_last: RecurrentState | None = None) -> RecurrentState:
        """Add the gradients of the loss to grads, given dlogits (T * B, V) for the
        logits of the last forward call. dstate_last is the gradient w.r.t. the final
        state (zero when truncating backpropagation). Returns the gradient w.r.t. the
        initial state. One backward per forward: it uses up what the forward saved
        (the LSTM's gate gradients replace its activations)."""
        from charrnn.engine import layer_backward, product, recurrent_weight_gradients, threads
        from charrnn.kernels.dropout import apply_mask
        from charrnn.kernels.linear import scatter_add_rows

        if self._last is None:
            raise RuntimeError("backward needs a forward pass of its own: the last one was used up")
        cfg, nthreads = self.cfg, threads()
        (ws, ids, use_dropout), self._last = self._last, None
        T, B = ids.shape
        H, TB = cfg.hidden, T * B
        packed = self.packed(nthreads).for_backward(nthreads)
        dstate0 = RecurrentState.zeros(cfg, B, self.params.dtype)
        top = ws.layers[-1].output.reshape(TB, H)
        dy = ws.dy[0]
        dy[...] = 0.0
        product(dy.reshape(TB, H), dlogits, False, packed.dec, nthreads)
        product(grads["decoder.weight"], dlogits, True, ws.packed_activations(top, nthreads), nthreads,
                row_sums=grads["decoder.bias"])
        for layer in range(cfg.layers - 1, -1, -1):
            buf, weights = ws.layers[layer], packed.layers[layer]
            dw_ih, dw_hh, db_ih, db_hh = grads.layer(layer)
            if use_dropout:
                apply_mask(dy, dy, buf.mask, nthreads)
            ws.dh[...] = 0.0 if dstate_last is None else dstate_last.h[layer]
            ws.dc[...] = 0.0 if dstate_last is None or dstate_last.c is None else dstate_last.c[layer]
            dxg, dhg = layer_backward(cfg.cell, buf, ws, weights, dy, ws.dh, ws.dc, nthreads)
            dstate0.h[layer] = ws.dh
            if dstate0.c is not None:
                dstate0.c[layer] = ws.dc
            recurrent_weight_gradients(ws, buf, dxg, dhg, dw_hh, db_ih, db_hh, nthreads)
            dxg2 = dxg.reshape(TB, cfg.gates * H)
            if layer > 0:
                below = ws.layers[layer - 1].output.reshape(TB, H)
                product(dw_ih, dxg2, True, ws.packed_activations(below, nthreads), nthreads)
                dy = ws.dy[(cfg.layers - layer) % 2]
                dy[...] = 0.0
                product(dy.reshape(TB, H), dxg2, False, weights.ih, nthreads)
            else:
                # Layer 0's input side was a table lookup: its gradient is a scatter
                # into the table's rows, then two small products over V rows.
                ws.dtable[...] = 0.0
                scatter_add_rows(ws.dtable, dxg2, ids.reshape(-1), nthreads)
                emb = self.params["embedding.weight"]
                product(dw_ih, ws.dtable, True, ws.packed_activations(emb, nthreads), nthreads)
                product(grads["embedding.weight"], ws.dtable, False, weights.ih, nthreads)
        return dstate0

    def _inference_state(self, ids, state):
        ids = np.array(ids, dtype=np.int64)  # a copy: the kernels update it
        h = np.ascontiguousarray(state.h, dtype=self.params.dtype).copy()
        c = np.ascontiguousarray(state.c, dtype=self.params.dtype).copy() if state.c is not None else h[:, :0]
        return ids, h, c

    def step(self, ids: np.ndarray, state: RecurrentState):
        """One character for each of B independent streams: (logits (B, V), new state).

        ids: (B,) ints. Row b's result depends only on row b's input and state, bit
        for bit, whatever B is; state is not modified."""
        from charrnn.engine import threads
        from charrnn.kernels.inference import step_logits

        nthreads = threads()
        current, h, c = self._inference_state(ids, state)
        logits = np.empty((current.shape[0], self.cfg.vocab_size), self.params.dtype)
        step_logits(logits, current, h, c, *self.packed(nthreads).inference_args(), nthreads)
        return logits, RecurrentState(h, c if state.c is not None else None)

    def generate(self, ids: np.ndarray, state: RecurrentState, uniforms: np.ndarray, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, argmax: bool = False):
        """K characters for each of B streams, each drawn from the model and fed back.

        ids: (B,) the last character of each stream; uniforms: (K, B) one number in
        [0, 1) per draw (see kernels.sampling.sample_rows: temperature, then top_k
        (0: all), then top_p (1: all); or the most likely character with argmax).
        Returns (K, B) characters and the state after them; row b depends only on row
        b's inputs, bit for bit."""
        from charrnn.engine import threads
        from charrnn.kernels.inference import generate

        nthreads = threads()
        current, h, c = self._inference_state(ids, state)
        out = np.empty(uniforms.shape, np.int64)
        generate(out, current, h, c, *self.packed(nthreads).inference_args(), np.ascontiguousarray(uniforms),
                 float(temperature), int(top_k), float(top_p), bool(argmax), nthreads)
        return out, RecurrentState(h, c if state.c is not None else None)

    def loss_and_grad(self, ids, targets, state, grads: ParamBuffer, dropout_key: int | None = None):
        """Mean cross-entropy (nats/char) of a (T, B) batch; adds its gradient to grads.
        Returns (loss, state after the batch)."""
        from charrnn.engine import threads
        from charrnn.kernels.loss import softmax_xent_backward

        logits, new_state = self.forward(ids, state, dropout_key)
        flat_targets = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
        total = softmax_xent_backward(logits, logits, flat_targets, 1.0 / flat_targets.size, threads())
        self.backward(logits, grads)
        return total / flat_targets.size, new_state

    def loss_sum(self, ids, targets, state):
        """Summed cross-entropy (nats) of a (T, B) batch without dropout, and the new state."""
        from charrnn.engine import threads
        from charrnn.kernels.loss import softmax_xent

        logits, new_state = self.forward(ids, state)
        flat_targets = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
        return softmax_xent(logits, flat_targets, threads()), new_state
