"""Running the model one character at a time, for B independent streams: one step
(returning logits) or a whole block of characters sampled inside one parallel region.

Per character and layer, the threads split the products by panels of gate columns
and the cell by units, as in training, and meet at barriers; for batch 1 each
thread's share of every weight matrix is read once per character. Each row's
products are computed by its own multiply-add chain in a fixed order, and the cell
is elementwise, so row b's result is bitwise the same whatever B or the number of
threads: N samples generated together equal each one generated alone.
"""

from collections import namedtuple

import numpy as np
from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.activations import tanh
from charrnn.kernels.gemm import gemm_block_n, split, tile_scratch
from charrnn.kernels.gru import gru_cell_forward
from charrnn.kernels.lstm import lstm_cell_forward
from charrnn.kernels.recurrence import GRU, LSTM, UNIT_ALIGN
from charrnn.kernels.sampling import choose_rows, history_append
from charrnn.kernels.simd import NR, barrier

# Every layer's weights, stacked into one array per kind (fixed types, so nothing is
# compiled per model):
#   table: (V, G*H) layer 0's input side for each character (embedding @ w_ih.T + bias)
#   ih_t: (L - 1, panels, H, NR) w_ih.T packed, layers 1..L-1
#   hh_t: (L, panels, H, NR) w_hh.T packed
#   bias: (L, G*H) the input-side bias (unused for layer 0, whose table holds it)
#   b_hn: (L, H) GRU only (zeros otherwise)
#   dec_t: the decoder's weight .T packed; dec_b: (V,)
InferenceWeights = namedtuple("InferenceWeights", ["table", "ih_t", "hh_t", "bias", "b_hn", "dec_t", "dec_b"])

# What every worker of a region shares while stepping B streams (made by the
# caller: a parallel kernel cannot make a namedtuple): gates, hg: (B, G*H);
# hn: (B, H); logits: (B, V); sync: int64 (BARRIER_SIZE,) zeros, the barrier's state.
StepBuffers = namedtuple("StepBuffers", ["gates", "hg", "hn", "logits", "sync"])


@kernel
def _advance(worker, nthreads, cell, current, h, c, w, s, scratch):
    """One character for all B streams, run by every worker of a region: the states
    h, c (L, B, H) advance in place and s.logits (B, V) are those of the next character.
    current: (B,) the characters read; w: InferenceWeights; s: StepBuffers."""
    L, B, H = h.shape
    GH = w.table.shape[1]
    p0, p1 = split(w.hh_t[0].shape[0], nthreads, worker, 1)
    u0, u1 = split(H, nthreads, worker, UNIT_ALIGN)
    lo, hi = p0 * NR, min(GH, p1 * NR)  # the gate columns this worker's panels write
    gates, hg = s.gates, s.hg
    for layer in range(L):
        hl = h[layer]
        for b in range(B):
            gates[b, lo:hi] = w.table[current[b], lo:hi] if layer == 0 else w.bias[layer][lo:hi]
        if layer > 0:
            gemm_block_n(h[layer - 1], w.ih_t[layer - 1], gates, 0, B, p0, p1, scratch)
        if cell == GRU:
            hg[:, lo:hi] = 0.0
            gemm_block_n(hl, w.hh_t[layer], hg, 0, B, p0, p1, scratch)
        else:
            gemm_block_n(hl, w.hh_t[layer], gates, 0, B, p0, p1, scratch)
        barrier(s.sync, nthreads)
        # Every read of this layer's old state is done: update it in place.
        if cell == LSTM:
            lstm_cell_forward(hl, c[layer], gates, c[layer], u0, u1)
        elif cell == GRU:
            gru_cell_forward(hl, gates, s.hn, hg, hl, w.b_hn[layer], u0, u1)
        else:
            for b in range(B):
                for j in range(u0, u1):
                    hl[b, j] = tanh(gates[b, j])
        barrier(s.sync, nthreads)
    q0, q1 = split(w.dec_t.shape[0], nthreads, worker, 1)
    for b in range(B):
        s.logits[b, q0 * NR:q1 * NR] = w.dec_b[q0 * NR:q1 * NR]
    gemm_block_n(h[L - 1], w.dec_t, s.logits, 0, B, q0, q1, scratch)
    barrier(s.sync, nthreads)


@parallel_kernel
def step_logits(s, current, h, c, cell, w, nthreads):
    """One character: s.logits (B, V) out; h, c (L, B, H) advanced in place;
    w: InferenceWeights; s: StepBuffers."""
    for worker in prange(nthreads):
        _advance(worker, nthreads, cell, current, h, c, w, s, tile_scratch(h))


@parallel_kernel
def generate(out, current, h, c, cell, w, s, uniforms, d, hist, nthreads):
    """K characters for each of B streams, each fed back as the next input.

    out: (K, B) the characters; current: (B,) in, the last character of each stream,
    out, the last one generated; h, c: (L, B, H) advanced in place; w:
    InferenceWeights; s: StepBuffers; uniforms: (K, B) one number in [0, 1) per draw;
    d: sampling.Decoding, how each row chooses; hist: sampling.History, each row's
    characters so far (for DRY), each new one added."""
    choice = np.empty(out.shape[1], np.int64)
    for worker in prange(nthreads):
        _generate_worker(worker, nthreads, out, current, h, c, cell, w, uniforms, d, hist, s, choice)


@kernel
def _generate_worker(worker, nthreads, out, current, h, c, cell, w, uniforms, d, hist, s, choice):
    """One worker's share of generate: its panels of every product and its rows'
    draws. (A prange body must not write through a namedtuple: see recurrence.py.)"""
    K, B = out.shape
    scratch = tile_scratch(h)
    r0, r1 = split(B, nthreads, worker, 1)
    for k in range(K):
        _advance(worker, nthreads, cell, current, h, c, w, s, scratch)
        if r1 > r0:
            choose_rows(choice, s.logits, uniforms[k], d, hist, r0, r1)
            for b in range(r0, r1):
                out[k, b] = choice[b]
                current[b] = choice[b]
                if d.dry_multiplier[b] > 0.0:
                    history_append(hist, choice[b], b, d.dry_last_n[b])
        barrier(s.sync, nthreads)
