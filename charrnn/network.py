"""The network's compute: forward and backward passes over (T, B) batches of
character ids, and the inference steps, on the engine's kernels."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from charrnn import isa
from charrnn.config import ModelConfig
from charrnn.engine import (PackedWeights, Workspace, layer_backward, layer_forward, product,
                            recurrent_weight_gradients, step_buffers, threads, threads_for)
from charrnn.kernels.dropout import apply_mask, dropout_mask
from charrnn.kernels.inference import generate, step_logits
from charrnn.kernels.linear import gather_rows, scatter_add_rows, set_rows
from charrnn.kernels.loss import softmax_xent, softmax_xent_backward, softmax_xent_rows
from charrnn.kernels.recurrence import CELL_CODES
from charrnn.kernels.sampling import Decoding, History
from charrnn.model import ParamBuffer, Parameters, RecurrentState, layer_dropout_keys, weight_drop_keys

# Workspaces kept for passes that do not train (Network._workspace): validation's
# chunk and tail, or a line-mode validation's lengths, a server's prompt chunks and
# scores, whose lengths vary with the text.
MAX_WORKSPACES = 8


class Network:
    """The model's forward and backward passes over (T, B) batches of character ids.

    params are read, never written; the packed copies the kernels read are rebuilt
    whenever params.version has moved on, or while params are being written.

    precision "bf16": training passes (those given a dropout key) run their
    matrix products (the time loops' too) in bfloat16 (AMX tiles or AVX512-BF16), float32 parameters, sums and cells
    (refused with a CharrnnError where the CPU or OS cannot); evaluation and
    inference stay float32."""

    def __init__(self, cfg: ModelConfig, params: Parameters, precision: str = "float32"):
        if not isinstance(params, Parameters):
            raise TypeError("a Network runs on Parameters (whose writes are versioned), not a plain ParamBuffer")
        if precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be float32 or bf16, not {precision!r}")
        self.bf16 = precision == "bf16"
        if self.bf16:
            if params.dtype != np.float32:
                raise ValueError("precision bf16 trains float32 parameters")
            isa.enable_bf16()
        self.cfg = cfg
        self.params = params
        self._packed_bf16 = None  # the training passes' packing in precision bf16
        self._workspaces: dict[tuple, object] = {}  # of passes that do not train, the last used last
        self._training_workspaces: dict[tuple, object] = {}  # training's few shapes, all kept
        self._packed = None
        self._hh_masks = None  # one (G*H, H) array per layer, refilled by each pass with weight drop
        self._dw_hh = None  # (G*H, H): one layer's w_hh gradient under weight drop, before its mask
        # (workspace, ids, dropout used, packed weights) of the last forward, for backward (which clears it)
        self._last = None

    def _workspace(self, T: int, B: int, dropout: bool, training: bool) -> Workspace:
        """The arrays of a (T, B) pass, kept for the next pass of that shape. Training
        has few shapes (one; line mode one per length step up to seq_len), all kept. Of
        the other passes only the MAX_WORKSPACES shapes used last are kept: a server
        scores texts and reads prompts of every length, and a workspace kept for each
        would only ever add memory."""
        key = (T, B, dropout)
        if training:
            ws = self._training_workspaces.get(key)
            if ws is None:
                ws = self._training_workspaces[key] = Workspace(self.cfg, T, B, self.params.dtype, dropout)
            return ws
        ws = self._workspaces.pop(key, None)
        if ws is None:
            ws = Workspace(self.cfg, T, B, self.params.dtype, dropout)
            while len(self._workspaces) >= MAX_WORKSPACES:
                del self._workspaces[next(iter(self._workspaces))]  # the one used longest ago
        self._workspaces[key] = ws  # last in the order: used most recently
        return ws

    def packed(self, nthreads: int) -> PackedWeights:
        """The weights packed for the kernels, rebuilt when the parameters change."""
        p = self.params
        if self._packed is None or self._packed.version != p.version or p.writing:
            self._packed = PackedWeights(self.cfg, self.params, nthreads)
        return self._packed

    def _pass_weights(self, dropout_key: int | None, nthreads: int) -> PackedWeights:
        """The packed weights a pass reads: the parameters', or for a training pass with
        weight drop, a packing of its own in which each w_hh is masked by this step's
        masks. Training changes the parameters every step, so they would be packed
        anew anyway: the masks cost their draw and one multiply, not a packing."""
        cfg, p = self.cfg, self.params
        if dropout_key is None:
            return self.packed(nthreads)
        if cfg.weight_drop <= 0.0:
            if not self.bf16:
                return self.packed(nthreads)
            packing = self._packed_bf16
            if packing is None or packing.version != p.version or p.writing:
                packing = self._packed_bf16 = PackedWeights(cfg, p, nthreads, bf16=True)
            return packing
        if self._hh_masks is None:
            shape = (cfg.gates * cfg.hidden, cfg.hidden)
            self._hh_masks = [np.empty(shape, self.params.dtype) for _ in range(cfg.layers)]
        for mask, key in zip(self._hh_masks, weight_drop_keys(dropout_key, cfg.layers)):
            dropout_mask(mask, key, cfg.weight_drop, nthreads)
        return PackedWeights(cfg, self.params, nthreads, hh_masks=self._hh_masks, bf16=self.bf16)

    def forward(self, ids: np.ndarray, state: RecurrentState, dropout_key: int | None = None):
        """Logits for every position, and the state after the last step.

        ids: (T, B) ints; state: initial state of the B streams (not modified).
        dropout_key: None for evaluation; an integer key for a training pass, which
        then applies dropout and weight drop (if the config has any) with masks
        derived from the key.
        Returns logits: (T * B, V), row t * B + b for stream b at step t, and the new state.
        """
        cfg, nthreads = self.cfg, threads()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        T, B = ids.shape
        use_dropout = dropout_key is not None and cfg.dropout > 0.0
        ws = self._workspace(T, B, use_dropout, training=dropout_key is not None)
        packed = self._pass_weights(dropout_key, nthreads)
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
                self._dropout_mask(buf.mask, keys[layer], nthreads)
                apply_mask(buf.ys, buf.hs, buf.mask, nthreads)
            below = buf.output
        set_rows(ws.logits, self.params.kernel_view["decoder.bias"], nthreads)
        product(ws.logits, below.reshape(T * B, cfg.hidden), False, packed.dec_t, nthreads)
        new_state = RecurrentState(
            np.stack([buf.hs_buf[T] for buf in ws.layers]),
            np.stack([buf.cs_buf[T] for buf in ws.layers]) if cfg.cell == "lstm" else None)
        self._last = (ws, ids, use_dropout, packed)
        return ws.logits, new_state

    def _dropout_mask(self, mask, key, nthreads: int) -> None:
        """Fill a layer's (T, B, H) output mask for a training pass: one draw per element,
        or, with locked dropout, one (B, H) draw repeated at every time step, so that a
        stream loses the same units for the whole batch."""
        if not self.cfg.locked_dropout:
            dropout_mask(mask, key, self.cfg.dropout, nthreads)
            return
        dropout_mask(mask[0], key, self.cfg.dropout, nthreads)
        mask[1:] = mask[0]

    def backward(self, dlogits: np.ndarray, grads: ParamBuffer,
                 dstate_last: RecurrentState | None = None) -> RecurrentState:
        """Add the gradients of the loss to grads, given dlogits (T * B, V) for the
        logits of the last forward call. dstate_last is the gradient w.r.t. the final
        state (zero when truncating backpropagation). Returns the gradient w.r.t. the
        initial state. One backward per forward: it uses up what the forward saved
        (the LSTM's gate gradients replace its activations)."""
        if self._last is None:
            raise RuntimeError("backward needs a forward pass of its own: the last one was used up")
        cfg, nthreads = self.cfg, threads()
        (ws, ids, use_dropout, packed), self._last = self._last, None
        T, B = ids.shape
        H, TB = cfg.hidden, T * B
        packed = packed.for_backward(nthreads)
        dstate0 = RecurrentState.zeros(cfg, B, self.params.dtype)
        top = ws.layers[-1].output.reshape(TB, H)
        dy = ws.dy[0]
        dy[...] = 0.0
        product(dy.reshape(TB, H), dlogits, False, packed.dec, nthreads)
        bf16 = packed.bf16
        product(grads["decoder.weight"], dlogits, True, ws.packed_activations(top, nthreads, bf16), nthreads,
                row_sums=grads["decoder.bias"])
        for layer in range(cfg.layers - 1, -1, -1):
            buf, weights = ws.layers[layer], packed.layers[layer]
            dw_ih = grads.layer(layer)[0]
            if use_dropout:
                apply_mask(dy, dy, buf.mask, nthreads)
            ws.dh[...] = 0.0 if dstate_last is None else dstate_last.h[layer]
            ws.dc[...] = 0.0 if dstate_last is None or dstate_last.c is None else dstate_last.c[layer]
            dxg, dhg = layer_backward(cfg.cell, buf, ws, weights, dy, ws.dh, ws.dc, nthreads)
            dstate0.h[layer] = ws.dh
            if dstate0.c is not None:
                dstate0.c[layer] = ws.dc
            below = ws.layers[layer - 1].output.reshape(TB, H) if layer > 0 else None
            self._recurrent_weight_gradients(ws, buf, dxg, dhg, packed, layer, grads, below, nthreads)
            dxg2 = dxg.reshape(TB, cfg.gates * H)
            if layer > 0:
                dy = ws.dy[(cfg.layers - layer) % 2]
                dy[...] = 0.0
                product(dy.reshape(TB, H), dxg2, False, weights.ih, nthreads)
            else:
                # Layer 0's input side was a table lookup: its gradient is a scatter
                # into the table's rows, then two small products over V rows.
                ws.dtable[...] = 0.0
                scatter_add_rows(ws.dtable, dxg2, ids.reshape(-1), nthreads)
                emb = self.params.kernel_view["embedding.weight"]
                product(dw_ih, ws.dtable, True, ws.packed_activations(emb, nthreads, bf16), nthreads)
                product(grads["embedding.weight"], ws.dtable, False, weights.ih, nthreads)
        return dstate0

    def _recurrent_weight_gradients(self, ws, buf, dxg, dhg, packed: PackedWeights, layer: int,
                                    grads: ParamBuffer, below, nthreads: int) -> None:
        """Add layer's w_hh and bias gradients to grads, and its w_ih gradient when its
        input is below (T*B, H) rather than the embedding table. Under weight drop the
        pass ran on w_hh * mask, so w_hh's gradient is that product's gradient times
        the mask."""
        dw_ih, dw_hh, db_ih, db_hh = grads.layer(layer)
        hh_masks = packed.hh_masks
        if hh_masks is None:
            recurrent_weight_gradients(ws, buf, dxg, dhg, dw_hh, db_ih, db_hh, nthreads, packed.bf16, below, dw_ih)
            return
        if self._dw_hh is None or self._dw_hh.dtype != dw_hh.dtype:
            self._dw_hh = np.empty_like(dw_hh)
        self._dw_hh[...] = 0.0
        recurrent_weight_gradients(ws, buf, dxg, dhg, self._dw_hh, db_ih, db_hh, nthreads, packed.bf16, below,
                                   dw_ih)
        dw_hh += np.multiply(self._dw_hh, hh_masks[layer], out=self._dw_hh)

    def _inference_state(self, ids, state):
        ids = np.array(ids, dtype=np.int64)  # a copy: the kernels update it
        h = np.ascontiguousarray(state.h, dtype=self.params.dtype).copy()
        c = np.ascontiguousarray(state.c, dtype=self.params.dtype).copy() if state.c is not None else h[:, :0]
        return ids, h, c

    def _step_threads(self, rows: int) -> int:
        """Threads for stepping `rows` streams a character at a time, from a character's
        multiply-adds (every layer's products and the decoder's) over its barriers
        (two a layer, one after the decoder, one after the draw): LSTM 1x128 at batch
        1, 18k a barrier, samples faster on one thread, the GRU 2x256, 100k, on two
        (see engine.SMALL_STEP). A row's result is the same on any number."""
        c = self.cfg
        per_row = c.gates * c.hidden * c.hidden * (2 * c.layers - 1) + c.hidden * c.vocab_size
        return threads_for(rows * per_row // (2 * c.layers + 2), threads())

    def step(self, ids: np.ndarray, state: RecurrentState):
        """One character for each of B independent streams: (logits (B, V), new state).

        ids: (B,) ints. Row b's result depends only on row b's input and state, bit
        for bit, whatever B is; state is not modified."""
        current, h, c = self._inference_state(ids, state)
        nthreads = self._step_threads(current.shape[0])
        buffers = step_buffers(self.cfg, current.shape[0], self.params.dtype)
        step_logits(buffers, current, h, c, CELL_CODES[self.cfg.cell], self.packed(threads()).inference(), nthreads)
        return buffers.logits, RecurrentState(h, c if state.c is not None else None)

    def generate(self, ids: np.ndarray, state: RecurrentState, uniforms: np.ndarray, temperature=1.0,
                 top_k=0, top_p=1.0, argmax=False, *, decoding: Decoding | None = None,
                 history: History | None = None):
        """K characters for each of B streams, each drawn from the model and fed back.

        ids: (B,) the last character of each stream; uniforms: (K, B) one number in
        [0, 1) per draw. How a row chooses (see kernels.sampling): temperature, then
        top_k (0: all), then top_p (1: all), or the most likely character with
        argmax; each a scalar for every row or a (B,) array, one value per row; or
        every setting at once as a Decoding (see make_decoding), with the rows'
        History for repetition control (updated in place).
        Returns (K, B) characters and the state after them; row b depends only on row
        b's inputs, bit for bit."""
        current, h, c = self._inference_state(ids, state)
        B = current.shape[0]
        nthreads = self._step_threads(B)
        out = np.empty(uniforms.shape, np.int64)
        if decoding is None:
            decoding = make_decoding(B, temperature, top_k, top_p, argmax)
        if history is None:
            history = History(np.zeros((B, 0), np.int64), np.zeros(B, np.int64))
        generate(out, current, h, c, CELL_CODES[self.cfg.cell], self.packed(threads()).inference(),
                 step_buffers(self.cfg, B, self.params.dtype), np.ascontiguousarray(uniforms), decoding, history,
                 nthreads)
        return out, RecurrentState(h, c if state.c is not None else None)

    def loss_and_grad(self, ids, targets, state, grads: ParamBuffer, dropout_key: int | None = None):
        """Mean cross-entropy (nats/char) of a (T, B) batch; adds its gradient to grads.
        A negative target is padding: it counts neither in the mean nor in the gradient.
        Returns (loss, state after the batch)."""
        logits, new_state = self.forward(ids, state, dropout_key)
        flat_targets = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
        count = max(1, int((flat_targets >= 0).sum()))
        total = softmax_xent_backward(logits, logits, flat_targets, 1.0 / count, threads())
        self.backward(logits, grads)
        return total / count, new_state

    def loss_sum(self, ids, targets, state):
        """Summed cross-entropy (nats) of a (T, B) batch without dropout (negative
        targets left out), and the new state."""
        logits, new_state = self.forward(ids, state)
        flat_targets = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
        return softmax_xent(logits, flat_targets, threads()), new_state

    def loss_rows(self, ids, targets, state):
        """The cross-entropy (nats, float64) of every position of a (T, B) batch, (T, B),
        0 where the target is negative; and the new state."""
        logits, new_state = self.forward(ids, state)
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        out = np.empty(targets.size)
        softmax_xent_rows(out, logits, targets.reshape(-1), threads())
        return out.reshape(targets.shape), new_state

def make_decoding(B: int, temperature=1.0, top_k=0, top_p=1.0, argmax=False, min_p=0.0, ban=None,
                  dry_multiplier=0.0, dry_base=1.75, dry_allowed=2, dry_last_n=1) -> Decoding:
    """A Decoding for B rows: each setting a scalar for every row or a (B,) sequence;
    ban: None, or (B, V) bool."""
    def rows(v, dtype):
        return np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype), (B,)))

    ban = np.zeros((B, 0), np.bool_) if ban is None else np.ascontiguousarray(ban, np.bool_)
    return Decoding(rows(temperature, np.float64), rows(top_k, np.int64), rows(top_p, np.float64),
                    rows(min_p, np.float64), rows(argmax, np.bool_), ban, rows(dry_multiplier, np.float64),
                    rows(dry_base, np.float64), rows(dry_allowed, np.int64), rows(dry_last_n, np.int64))


def run_to_end(steps: Generator):
    """The result of work done a step at a time: a generator that yields between steps
    (so that a server can run other work there) and returns its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
