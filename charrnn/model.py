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
    """A flat array with a named, shaped view per tensor."""

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


class _Workspace:
    """Every array one forward/backward pass over a (T, B) batch needs, allocated once."""

    def __init__(self, cfg: ModelConfig, T: int, B: int, dtype, dropout: bool):
        H, GH = cfg.hidden, cfg.gates * cfg.hidden
        new = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
        self.emb = new(T, B, cfg.embed)
        self.hs = [new(T, B, H) for _ in range(cfg.layers)]
        self.acts = [new(T, B, GH) for _ in range(cfg.layers)] if cfg.cell != "rnn" else None
        # LSTM: cell states; GRU: W_hn h + b_hn; RNN: nothing more.
        self.extra = [new(T, B, H) for _ in range(cfg.layers)] if cfg.cell != "rnn" else None
        self.masks = [new(T, B, H) for _ in range(cfg.layers)] if dropout else None
        self.ys = [new(T, B, H) for _ in range(cfg.layers)] if dropout else None
        self.logits = new(T * B, cfg.vocab_size)
        # Backward: the gradient w.r.t. a layer's output, w.r.t. the embedding output,
        # and the per-step gate gradients (two arrays for the GRU, see weight_gradients).
        self.dy = [new(T, B, H), new(T, B, H)]
        self.demb = new(T, B, cfg.embed)
        self.dgates = new(T, B, GH)
        self.dgates_h = new(T, B, GH) if cfg.cell == "gru" else None
        self.dh0 = new(B, H)
        self.dc0 = new(B, H)

    def layer_output(self, layer: int) -> np.ndarray:
        """What the layer above (or the decoder) reads: the output after dropout."""
        return self.ys[layer] if self.ys is not None else self.hs[layer]


class Network:
    """The model's forward and backward passes over (T, B) batches of character ids."""

    def __init__(self, cfg: ModelConfig, params: ParamBuffer):
        self.cfg = cfg
        self.params = params
        self._workspaces: dict[tuple, _Workspace] = {}
        self._last = None  # (workspace, ids, initial state, dropout) of the last forward

    def _workspace(self, T: int, B: int, dropout: bool) -> _Workspace:
        key = (T, B, dropout)
        if key not in self._workspaces:
            self._workspaces[key] = _Workspace(self.cfg, T, B, self.params.dtype, dropout)
        return self._workspaces[key]

    def forward(self, ids: np.ndarray, state: RecurrentState, dropout_key: int | None = None):
        """Logits for every position, and the state after the last step.

        ids: (T, B) ints; state: initial state of the B streams (not modified).
        dropout_key: None for evaluation; an integer key for a training pass, which
        then applies dropout (if the config has any) with masks derived from the key.
        Returns logits: (T * B, V), row t * B + b for stream b at step t, and the new state.
        """
        from charrnn.kernels.linear import embedding_forward, linear_forward

        cfg = self.cfg
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        T, B = ids.shape
        use_dropout = dropout_key is not None and cfg.dropout > 0.0
        ws = self._workspace(T, B, use_dropout)
        keys = layer_dropout_keys(dropout_key, cfg.layers) if use_dropout else None
        embedding_forward(ws.emb, ids, self.params["embedding.weight"])
        x = ws.emb
        for layer in range(cfg.layers):
            c0 = state.c[layer] if state.c is not None else None
            self._layer_forward(layer, ws, x, state.h[layer], c0)
            if use_dropout:
                from charrnn.kernels.dropout import dropout_mask

                dropout_mask(ws.masks[layer], keys[layer], cfg.dropout)
                np.multiply(ws.hs[layer], ws.masks[layer], out=ws.ys[layer])
            x = ws.layer_output(layer)
        top = x.reshape(T * B, cfg.hidden)
        linear_forward(ws.logits, top, self.params["decoder.weight"], self.params["decoder.bias"])
        new_state = RecurrentState(
            np.stack([hs[T - 1] for hs in ws.hs]),
            np.stack([cs[T - 1] for cs in ws.extra]) if cfg.cell == "lstm" else None,
        )
        self._last = (ws, ids, state.copy(), use_dropout)
        return ws.logits, new_state

    def _layer_forward(self, layer, ws, x, h0, c0):
        from charrnn.kernels.gru import gru_forward
        from charrnn.kernels.lstm import lstm_forward
        from charrnn.kernels.rnn import rnn_forward

        w_ih, w_hh, b_ih, b_hh = self.params.layer(layer)
        if self.cfg.cell == "lstm":
            lstm_forward(ws.hs[layer], ws.extra[layer], ws.acts[layer], x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        elif self.cfg.cell == "gru":
            gru_forward(ws.hs[layer], ws.acts[layer], ws.extra[layer], x, h0, w_ih, w_hh, b_ih, b_hh)
        else:
            rnn_forward(ws.hs[layer], x, h0, w_ih, w_hh, b_ih, b_hh)

    def backward(self, dlogits: np.ndarray, grads: ParamBuffer,
                 dstate_last: RecurrentState | None = None) -> RecurrentState:
        """Add the gradients of the loss to grads, given dlogits (T * B, V) for the
        logits of the last forward call. dstate_last is the gradient w.r.t. the final
        state (zero when truncating backpropagation). Returns the gradient w.r.t. the
        initial state."""
        from charrnn.kernels.linear import embedding_backward, linear_backward

        cfg = self.cfg
        ws, ids, state0, use_dropout = self._last
        T, B = ids.shape
        if dstate_last is None:
            dstate_last = RecurrentState.zeros(cfg, B, self.params.dtype)
        dstate0 = RecurrentState.zeros(cfg, B, self.params.dtype)
        top = ws.layer_output(cfg.layers - 1).reshape(T * B, cfg.hidden)
        dy = ws.dy[0]
        linear_backward(dy.reshape(T * B, cfg.hidden), grads["decoder.weight"], grads["decoder.bias"],
                        dlogits, top, self.params["decoder.weight"])
        for layer in range(cfg.layers - 1, -1, -1):
            if use_dropout:
                dy *= ws.masks[layer]
            x = ws.emb if layer == 0 else ws.layer_output(layer - 1)
            dx = ws.demb if layer == 0 else ws.dy[(cfg.layers - layer) % 2]
            self._layer_backward(layer, ws, grads, dx, dy, x, state0, dstate_last)
            dstate0.h[layer] = ws.dh0
            if dstate0.c is not None:
                dstate0.c[layer] = ws.dc0
            dy = dx
        embedding_backward(grads["embedding.weight"], ws.demb, ids)
        return dstate0

    def _layer_backward(self, layer, ws, grads, dx, dy, x, state0, dstate_last):
        from charrnn.kernels.gru import gru_backward
        from charrnn.kernels.lstm import lstm_backward
        from charrnn.kernels.rnn import rnn_backward

        w_ih, w_hh, _, _ = self.params.layer(layer)
        dw_ih, dw_hh, db_ih, db_hh = grads.layer(layer)
        h0, dh_last = state0.h[layer], dstate_last.h[layer]
        hs = ws.hs[layer]
        if self.cfg.cell == "lstm":
            lstm_backward(dx, ws.dh0, ws.dc0, dw_ih, dw_hh, db_ih, db_hh, ws.dgates,
                          dy, dh_last, dstate_last.c[layer], x, h0, state0.c[layer], hs,
                          ws.extra[layer], ws.acts[layer], w_ih, w_hh)
        elif self.cfg.cell == "gru":
            gru_backward(dx, ws.dh0, dw_ih, dw_hh, db_ih, db_hh, ws.dgates, ws.dgates_h,
                         dy, dh_last, x, h0, hs, ws.acts[layer], ws.extra[layer], w_ih, w_hh)
        else:
            rnn_backward(dx, ws.dh0, dw_ih, dw_hh, db_ih, db_hh, ws.dgates, dy, dh_last,
                         x, h0, hs, w_ih, w_hh)

    def step(self, ids: np.ndarray, state: RecurrentState):
        """One character for each of B independent streams: (logits (B, V), new state).

        ids: (B,) ints. Row b's result depends only on row b's input and state, bit
        for bit, whatever B is; state is not modified."""
        from charrnn.kernels.gru import gru_cell_forward
        from charrnn.kernels.inference import rows_matvec_add, rows_set
        from charrnn.kernels.lstm import lstm_cell_forward

        cfg, p = self.cfg, self.params
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        B, H, dtype = ids.shape[0], cfg.hidden, p.dtype
        x = np.ascontiguousarray(p["embedding.weight"][ids])
        new = RecurrentState.zeros(cfg, B, dtype)
        for layer in range(cfg.layers):
            w_ih, w_hh, b_ih, b_hh = p.layer(layer)
            h = state.h[layer]
            gates = np.empty((B, cfg.gates * H), dtype)
            if cfg.cell == "gru":
                # r, z take both biases; n's recurrent part is gated by r, so keep it apart.
                rows_set(gates, b_ih + np.r_[b_hh[:2 * H], np.zeros(H, dtype)])
                rows_matvec_add(gates, w_ih, x)
                hg = np.zeros((B, 3 * H), dtype)
                rows_matvec_add(hg, w_hh, h)
                gru_cell_forward(new.h[layer], gates, np.empty((B, H), dtype), hg, h, b_hh[2 * H:])
            else:
                rows_set(gates, b_ih + b_hh)
                rows_matvec_add(gates, w_ih, x)
                rows_matvec_add(gates, w_hh, h)
                if cfg.cell == "lstm":
                    lstm_cell_forward(new.h[layer], new.c[layer], gates, state.c[layer])
                else:
                    new.h[layer] = np.tanh(gates)
            x = new.h[layer]
        logits = np.empty((B, cfg.vocab_size), dtype)
        rows_set(logits, p["decoder.bias"])
        rows_matvec_add(logits, p["decoder.weight"], x)
        return logits, new

    def loss_and_grad(self, ids, targets, state, grads: ParamBuffer, dropout_key: int | None = None):
        """Mean cross-entropy (nats/char) of a (T, B) batch; adds its gradient to grads.
        Returns (loss, state after the batch)."""
        from charrnn.kernels.loss import softmax_xent_backward

        logits, new_state = self.forward(ids, state, dropout_key)
        flat_targets = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
        total = softmax_xent_backward(logits, logits, flat_targets, 1.0 / flat_targets.size)
        self.backward(logits, grads)
        return total / flat_targets.size, new_state

    def loss_sum(self, ids, targets, state):
        """Summed cross-entropy (nats) of a (T, B) batch without dropout, and the new state."""
        from charrnn.kernels.loss import softmax_xent

        logits, new_state = self.forward(ids, state)
        flat_targets = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
        return softmax_xent(logits, flat_targets), new_state
