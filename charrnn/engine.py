"""The engine's driver: which kernel runs when, on which arrays, with how many threads.

Per layer, a forward pass is: the input side of every step at once (for layer 0 a
gather from a (V, G*H) table, embedding @ w_ih.T + biases; above it one matrix
product over T*B rows), then the time loop (one parallel region). Backward is the
time loop in reverse, then every weight gradient as one product over T*B rows.
Weights are packed into panels once per version of the parameters.

Training in bfloat16 (precision "bf16") runs the whole-batch products on AMX tiles
or AVX512-BF16 (kernels/amx.py): their weights and activations are packed as bfloat16 pairs, and
product() takes either packing; so are w_hh's packings, for the time loops'
recurrent products (kernels/recurrence_bf16.py). The cells stay float32.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from charrnn import isa
from charrnn.kernels import amx
from charrnn.kernels.gemm import gemm, pack, panels
from charrnn.kernels.inference import InferenceWeights, StepBuffers
from charrnn.kernels.linear import add_column_sums, set_rows
from charrnn.kernels.recurrence import (CELL_CODES, BackwardArrays, ForwardArrays, recurrence_backward, recurrence_forward,
                                       unit_panels)
from charrnn.kernels.recurrence_bf16 import recurrence_backward_bf16, recurrence_forward_bf16
from charrnn.kernels.simd import BARRIER_SIZE, NR
from charrnn.model import Parameters


def threads() -> int:
    """Threads the kernels use: Numba's setting (NUMBA_NUM_THREADS, all cores by default)."""
    return numba.get_num_threads()


# The least work, in multiply-adds between two barriers, worth a thread of its own:
# below it a second thread's barriers cost more than its share of the work saves.
# Measured, 2 cores, one stream: on Zen 3 (AVX2; a time step of LSTM 1x128 is split
# by panels, two barriers of 33k each) evaluation ran at 148k chars/s on 1 thread
# against 119-129k on 2; on Zen 5 (AVX-512; split by units, one barrier of 65k) at
# 421k on 2 against 330k on 1, while sampling it (four barriers a character, 18k
# each) ran at 223k on 1 against 156k on 2.
SMALL_STEP = 1 << 15


def threads_for(work: int, nthreads: int) -> int:
    """Threads for a step of `work` multiply-adds between barriers: at most nthreads,
    and no more than give each thread SMALL_STEP of them."""
    return max(1, min(nthreads, work // max(1, SMALL_STEP)))


def loop_threads(rows: int, hidden: int, gates: int, nthreads: int) -> int:
    """Threads for a time loop over `rows` streams of a layer of `hidden` units: a
    step's product and cell meet at one barrier when split by units, else at two
    (kernels.recurrence.unit_panels)."""
    barriers = 1 if unit_panels(hidden, nthreads) else 2
    return threads_for(rows * hidden * gates * hidden // barriers, nthreads)


def packed(matrix: np.ndarray, transpose: bool, nthreads: int, bf16: bool = False) -> np.ndarray:
    """matrix (K, N), or matrix.T when transpose, as panels (panels(N), K, NR); or with
    bf16 as bfloat16 pairs (see kernels.amx), which product() then multiplies in
    bfloat16."""
    k, n = matrix.shape[::-1] if transpose else matrix.shape
    if bf16:
        out = np.empty((-(-n // amx.BLOCK), amx.padded(k) // 2, 2 * amx.BLOCK), np.uint16)
        amx.pack_bf16(out, matrix, transpose, nthreads)
        return out
    out = np.empty((panels(n), k, NR), matrix.dtype)
    pack(out, matrix, transpose, nthreads)
    return out


_TILE_CONFIGS = amx.tile_configs()
_bf16_buffers = threading.local()  # per Python thread: a product's A in bfloat16, kept by shape


def _bf16_workspace(copies: int, rows: int, cols: int) -> np.ndarray:
    """A (copies, padded(rows), padded(cols)) uint16 array for gemm_bf16, reused
    between calls of the same shape (a new one would be faulted in page by page)."""
    cache = getattr(_bf16_buffers, "arrays", None)
    if cache is None:
        cache = _bf16_buffers.arrays = {}
    key = (copies, amx.padded(rows), amx.padded(cols))
    if key not in cache:
        cache[key] = np.empty(key, np.uint16)
    return cache[key]


def product(out: np.ndarray, a: np.ndarray, trans_a: bool, b_packed: np.ndarray, nthreads: int,
            row_sums: np.ndarray | None = None, a_bf16: np.ndarray | None = None) -> None:
    """out += op(a) @ B, B packed (see packed); with trans_a, also row_sums += the
    row sums of op(a) (the column sums of a), if given.
    a_bf16: for B in bfloat16, op(a) already rounded to bfloat16 as the product reads
    it, (padded(M), padded(K)) uint16, zero past op(a) (as layer_backward leaves the
    gate gradients for the weight gradients): it is multiplied, a itself is not read.
    No effect in float32."""
    if not b_packed.flags.c_contiguous:  # a row alone reads several panels as one (gemm_block_n)
        raise ValueError("b_packed must be a whole packed array (C-contiguous), as packed() returns")
    if row_sums is None:
        row_sums = np.empty(0, out.dtype)
    elif not trans_a:
        raise ValueError("row_sums come with the packing of a transposed A only")
    elif row_sums.shape != (out.shape[0],):  # the kernels do not check bounds
        raise ValueError(f"row_sums has shape {row_sums.shape}, not ({out.shape[0]},)")
    if b_packed.dtype == np.uint16:  # bfloat16 pairs: AMX tiles or AVX512-BF16
        isa.enable_bf16()  # once per process (cached); an AMX instruction without it would kill the process
        M, K = out.shape[0], a.shape[0] if trans_a else a.shape[1]
        if a_bf16 is not None:
            _check_rounded(a_bf16, M, K, row_sums)
            a_bf = a_bf16[None]
        else:
            by_rows = amx.split_by_rows(amx.padded(M), b_packed.shape[0], nthreads, row_sums.size > 0, False)
            a_bf = _bf16_workspace(1 if by_rows else nthreads, M, K)
        amx.gemm_bf16(a, trans_a, b_packed, out, row_sums, a_bf, a_bf16 is not None, _TILE_CONFIGS, nthreads)
        return
    gemm(a, trans_a, b_packed, out, row_sums, nthreads)


def _check_rounded(a_bf16: np.ndarray, M: int, K: int, row_sums: np.ndarray) -> None:
    """The kernels do not check bounds: a_bf16 must be what product() expects."""
    if row_sums.size > 0:
        raise ValueError("row_sums are taken as A is rounded: not with a_bf16")
    if a_bf16.dtype != np.uint16 or a_bf16.shape != (amx.padded(M), amx.padded(K)) or not a_bf16.flags.c_contiguous:
        raise ValueError(f"a_bf16 must be a contiguous ({amx.padded(M)}, {amx.padded(K)}) uint16 array")


class PackedLayer:
    """One recurrent layer's weights in the forms the kernels read.

    hh_t: w_hh.T (H, G*H) for the forward time loop; ih_t: w_ih.T (D, G*H) for the
    input side; bias: what the input side adds (GRU: b_ih plus b_hr and b_hz; b_hn
    is added inside the cell, after the reset gate); b_hn: (H,) for the GRU.
    For backward: hh: w_hh (G*H, H) and ih: w_ih (G*H, D)."""

    def __init__(self, cell: str, w_ih, w_hh, b_ih, b_hh, nthreads: int, bf16: bool = False):
        h = w_hh.shape[1]
        self.bf16 = bf16  # every packing in bfloat16 pairs
        self.hh_t = packed(w_hh, True, nthreads, bf16)
        self.ih_t = packed(w_ih, True, nthreads, bf16)
        if cell == "gru":
            self.bias = b_ih.copy()
            self.bias[:2 * h] += b_hh[:2 * h]
            self.b_hn = np.ascontiguousarray(b_hh[2 * h:])
        else:
            self.bias = b_ih + b_hh
            self.b_hn = np.zeros(0, w_hh.dtype)
        self.hh = self.ih = None
        self._weights = (w_ih, w_hh)

    def for_backward(self, nthreads: int) -> "PackedLayer":
        if self.hh is None:
            w_ih, w_hh = self._weights
            self.hh = packed(w_hh, False, nthreads, self.bf16)
            self.ih = packed(w_ih, False, nthreads, self.bf16)
        return self


class PackedWeights:
    """Every weight matrix packed, for one version of the parameters; plus layer 0's
    input table (V, G*H) = embedding @ w_ih0.T + bias, so that layer 0's input side
    is a row gather.

    hh_masks: None, or one (G*H, H) mask per layer for a training pass with weight
    drop: each layer's w_hh is packed multiplied by its mask (0 or 1 / (1 - p)).
    Such a packing is for that pass alone, never for inference.
    bf16: every weight packed as bfloat16 pairs, for a training pass in precision bf16; never for inference."""

    def __init__(self, cfg, params: Parameters, nthreads: int, hh_masks=None, bf16: bool = False):
        self.version = params.version
        self.hh_masks = hh_masks
        self.bf16 = bf16
        params = params.kernel_view  # the same memory, as the kernels read it
        self.layers = []
        for k in range(cfg.layers):
            w_ih, w_hh, b_ih, b_hh = params.layer(k)
            if hh_masks is not None:
                w_hh = w_hh * hh_masks[k]
            self.layers.append(PackedLayer(cfg.cell, w_ih, w_hh, b_ih, b_hh, nthreads, bf16))
        first = self.layers[0]
        self.table = np.empty((cfg.vocab_size, cfg.gates * cfg.hidden), params.dtype)
        set_rows(self.table, first.bias, nthreads)
        product(self.table, params["embedding.weight"], False, first.ih_t, nthreads)
        self.dec_t = packed(params["decoder.weight"], True, nthreads, bf16)
        self.dec = None
        self._params = params
        self._inference = None

    def inference(self) -> InferenceWeights:
        """The weights as the inference kernels take them (see InferenceWeights)."""
        assert self.hh_masks is None and not self.bf16, "weights packed with weight drop or bf16 are for training only"
        if self._inference is None:
            cfg, p = self._params.cfg, self._params
            upper = self.layers[1:]
            ih_t = (np.stack([layer.ih_t for layer in upper]) if upper
                    else np.zeros((0, *self.layers[0].hh_t.shape), p.dtype))
            b_hn = [layer.b_hn if cfg.cell == "gru" else np.zeros(cfg.hidden, p.dtype) for layer in self.layers]
            self._inference = InferenceWeights(
                self.table, ih_t, np.stack([layer.hh_t for layer in self.layers]),
                np.stack([layer.bias for layer in self.layers]), np.stack(b_hn), self.dec_t, p["decoder.bias"])
        return self._inference

    def for_backward(self, nthreads: int) -> "PackedWeights":
        if self.dec is None:
            for layer in self.layers:
                layer.for_backward(nthreads)
            self.dec = packed(self._params["decoder.weight"], False, nthreads, self.bf16)
        return self


def step_buffers(cfg, batch: int, dtype) -> StepBuffers:
    """The arrays the workers of an inference step share, for `batch` streams."""
    gh = cfg.gates * cfg.hidden
    return StepBuffers(np.empty((batch, gh), dtype), np.empty((batch, gh), dtype), np.empty((batch, cfg.hidden), dtype),
                       np.empty((batch, cfg.vocab_size), dtype), np.zeros(BARRIER_SIZE, np.int64))


class LayerBuffers:
    """One layer's arrays for a (T, B) batch. hs_buf[0] is the initial state and
    hs_buf[t + 1] the state after step t, so [h0; hs[:-1]] is hs_buf[:T] (cs_buf the same
    for the LSTM's cell state). An array the cell does not use is empty but for its
    first axis (see kernels.recurrence.ForwardArrays)."""

    def __init__(self, cell: str, T: int, B: int, H: int, gates: int, dtype, dropout: bool):
        def new(*shape, used=True):
            return np.zeros(shape if used else shape[:1] + (0,) * (len(shape) - 1), dtype)

        self.cell = cell
        self.hs_buf = new(T + 1, B, H)
        self.cs_buf = new(T + 1, B, H, used=cell == "lstm")
        self.acts = new(T, B, gates * H, used=cell != "rnn")  # RNN: hs holds its pre-activations
        self.hn = new(T, B, H, used=cell == "gru")
        self.hg = new(B, 3 * H, used=cell == "gru")
        self.mask = new(T, B, H) if dropout else None
        self.ys = new(T, B, H) if dropout else None

    @property
    def hs(self) -> np.ndarray:
        return self.hs_buf[1:]

    @property
    def output(self) -> np.ndarray:
        """What the layer above (or the decoder) reads: the output after dropout."""
        return self.ys if self.ys is not None else self.hs

    def input_side(self) -> np.ndarray:
        """Where the input side of every step goes, as (T * B, G*H)."""
        target = self.hs if self.cell == "rnn" else self.acts
        return target.reshape(-1, target.shape[-1])


class Workspace:
    """Every array one forward/backward pass over a (T, B) batch needs, allocated once."""

    def __init__(self, cfg, T: int, B: int, dtype, dropout: bool):
        H, GH = cfg.hidden, cfg.gates * cfg.hidden
        self.layers = [LayerBuffers(cfg.cell, T, B, H, cfg.gates, dtype, dropout) for _ in range(cfg.layers)]
        self.logits = np.zeros((T * B, cfg.vocab_size), dtype)
        # Backward: the gradient w.r.t. a layer's output (two, used in turn), the
        # per-step gate gradients (the LSTM's replace its activations; two arrays for
        # the GRU, see gru_cell_backward), the state gradients, layer 0's table
        # gradient, and packed activations.
        self.dy = [np.zeros((T, B, H), dtype), np.zeros((T, B, H), dtype)]
        self.dgates = np.zeros((T, B, GH) if cfg.cell != "lstm" else (T, 0, 0), dtype)
        self.dgates_h = np.zeros((T, B, GH) if cfg.cell == "gru" else (T, 0, 0), dtype)
        self.dh = np.zeros((B, H), dtype)
        self.dc = np.zeros((B, H), dtype)
        self.dtable = np.zeros((cfg.vocab_size, GH), dtype)
        # bf16: the recurrent gate gradients' sums, and (gates_t) their transpose rounded
        # by the backward time loop, for the weight gradients (recurrent_weight_gradients)
        self.gate_sums = np.zeros(GH, dtype)
        self._gates_t_shape = (amx.padded(GH), amx.padded(T * B))
        self._gates_t: np.ndarray | None = None
        self.gates_t_of: LayerBuffers | None = None  # the layer whose gradients they are
        self._packed_activations: dict[tuple[int, int], np.ndarray] = {}

    def gates_t(self) -> np.ndarray:
        """(padded(G*H), padded(T*B)) uint16, made once: zeros, which the padding stays."""
        if self._gates_t is None:
            self._gates_t = np.zeros(self._gates_t_shape, np.uint16)
        return self._gates_t

    def packed_activations(self, x2: np.ndarray, nthreads: int, bf16: bool = False) -> np.ndarray:
        """x2 (K, N) packed as the B of a weight-gradient product (bf16: as bfloat16
        pairs), into a buffer kept per shape (whole arrays, not views: one compiled
        signature for the kernels)."""
        k, n = x2.shape
        out = self._packed_activations.get((k, n, bf16))
        if out is None:
            out = packed(x2, False, nthreads, bf16)
            self._packed_activations[(k, n, bf16)] = out
        elif bf16:
            amx.pack_bf16(out, x2, False, nthreads)
        else:
            pack(out, x2, False, nthreads)
        return out


def layer_forward(cell: str, buf: LayerBuffers, layer: PackedLayer, h0, c0, nthreads: int) -> None:
    """The time loop of one layer, its input side already in buf.input_side()."""
    _, B, H = buf.hs_buf.shape
    nthreads = loop_threads(B, H, layer.bias.shape[0] // H, nthreads)
    buf.hs_buf[0] = h0
    if cell == "lstm":
        buf.cs_buf[0] = c0
    arrays = ForwardArrays(buf.hs, buf.cs_buf[1:], buf.acts, buf.hn, buf.hg, buf.hs_buf[0], buf.cs_buf[0],
                           layer.b_hn)
    if layer.bf16:
        isa.enable_bf16()  # as in product()
        h_bf = np.zeros((2, amx.padded(B), amx.padded(H)), np.uint16)  # h_prev rounded, alternate steps
        recurrence_forward_bf16(CELL_CODES[cell], arrays, layer.hh_t, h_bf, _TILE_CONFIGS, nthreads)
    else:
        recurrence_forward(CELL_CODES[cell], arrays, layer.hh_t, nthreads)


def layer_backward(cell: str, buf: LayerBuffers, ws: Workspace, layer: PackedLayer, dhs, dh, dc,
                   nthreads: int) -> tuple[np.ndarray, np.ndarray]:
    """Backpropagation through one layer's time loop. dhs: (T, B, H) gradient w.r.t.
    the layer's hidden states; dh, dc: (B, H) in, w.r.t. the final state; out, w.r.t.
    the initial state. Returns the gradients w.r.t. the input-side and recurrent-side
    pre-activations, (T, B, G*H) each (the same array but for the GRU). For the LSTM
    that array is buf.acts: the gradients replace the saved activations, so a layer
    takes one backward per forward. In bf16 it also leaves the recurrent-side
    gradients transposed and rounded in ws.gates_t(), and their sums in
    ws.gate_sums, for this layer's recurrent_weight_gradients."""
    B, H = dh.shape
    nthreads = loop_threads(B, H, layer.bias.shape[0] // H, nthreads)
    arrays = BackwardArrays(buf.acts, ws.dgates, ws.dgates_h, dh, dc, dhs, buf.hs, buf.hs_buf[0], buf.cs_buf[1:],
                            buf.cs_buf[0], buf.hn)
    if layer.bf16:
        isa.enable_bf16()
        gh = layer.bias.shape[0]
        d_bf = np.zeros((2, amx.padded(B), amx.padded(gh)), np.uint16)  # the recurrent gradients rounded, alternate steps
        if ws.gates_t().shape != (amx.padded(gh), amx.padded(dhs.shape[0] * B)):  # the kernel checks no bounds
            raise ValueError("layer_backward: the workspace was made for another batch shape")
        ws.gate_sums[...] = 0.0
        recurrence_backward_bf16(CELL_CODES[cell], arrays, layer.hh, d_bf, ws.gates_t(), ws.gate_sums, _TILE_CONFIGS,
                                 nthreads)
        ws.gates_t_of = buf
    else:
        recurrence_backward(CELL_CODES[cell], arrays, layer.hh, nthreads)
    if cell == "lstm":
        return buf.acts, buf.acts  # the gradients replaced the activations
    return (ws.dgates, ws.dgates_h) if cell == "gru" else (ws.dgates, ws.dgates)


def recurrent_weight_gradients(ws: Workspace, buf: LayerBuffers, dxg, dhg, dw_hh, db_ih, db_hh,
                               nthreads: int, bf16: bool = False, below=None, dw_ih=None) -> None:
    """dw_hh += dhg^T [h0; hs[:-1]], and both bias gradients, each one product or
    sum over all T*B rows (in float32 db_hh's sums taken in the product); with below (T*B, D),
    the layer's input, also dw_ih += dxg^T below. bf16: those products in bfloat16
    (AMX or AVX512-BF16), from dhg^T as the layer's bf16 backward loop left it rounded
    in ws.gates_t() with its sums in ws.gate_sums (this layer's layer_backward must be
    the last one run on ws); for the LSTM and RNN dxg is dhg, so dw_ih's product
    reads the same copy."""
    T, B, GH = dxg.shape
    H = buf.hs_buf.shape[2]
    dxg2, dhg2 = dxg.reshape(T * B, GH), dhg.reshape(T * B, GH)
    same = dxg is dhg  # LSTM, RNN: both biases get the same gradient
    if bf16 and ws.gates_t_of is not buf:
        raise RuntimeError("bf16 weight gradients need this layer's layer_backward just before, on the same workspace")
    hs_prev = ws.packed_activations(buf.hs_buf[:T].reshape(T * B, H), nthreads, bf16)
    if bf16:
        product(dw_hh, dhg2, True, hs_prev, nthreads, a_bf16=ws.gates_t())
        sums = ws.gate_sums
        db_hh += sums
    else:
        sums = np.zeros_like(db_hh) if same else db_hh
        product(dw_hh, dhg2, True, hs_prev, nthreads, row_sums=sums)
        if same:
            db_hh += sums
    if below is not None:
        product(dw_ih, dxg2, True, ws.packed_activations(below, nthreads, bf16), nthreads,
                a_bf16=ws.gates_t() if bf16 and same else None)
    if same:
        db_ih += sums
    else:
        add_column_sums(db_ih, dxg2, nthreads)
