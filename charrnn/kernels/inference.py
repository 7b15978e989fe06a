"""Running the model one character at a time, for B independent streams: one step
(returning logits) or a whole block of characters sampled inside one parallel region.

Per character and layer, the threads split the products by panels of gate columns
and the cell by units, as in training, and meet at barriers; for batch 1 each
thread's share of every weight matrix is read once per character. Each row's
products are computed by its own multiply-add chain in a fixed order, and the cell
is elementwise, so row b's result is bitwise the same whatever B or the number of
threads: N samples generated together equal each one generated alone.
"""

import numpy as np
from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.activations import tanh
from charrnn.kernels.gemm import gemm_block_n, split, tile_scratch
from charrnn.kernels.gru import gru_cell_forward
from charrnn.kernels.lstm import UNIT_ALIGN, lstm_cell_forward
from charrnn.kernels.sampling import argmax_rows, sample_rows
from charrnn.kernels.simd import BARRIER_SIZE, NR, barrier

LSTM, GRU, RNN = 0, 1, 2  # cell codes


@kernel
def _advance(worker, nthreads, sync, cell, current, h, c, table, ih_t, hh_t, bias, b_hn, dec_t, dec_b,
             gates, hg, hn, logits, scratch):
    """One character for all B streams, run by every worker of a region: the states
    h, c (L, B, H) advance in place and logits (B, V) are those of the next character.

    current: (B,) the characters read; table: (V, G*H) layer 0's input side;
    ih_t: (L - 1, ...) w_ih.T packed for layers 1..L-1; hh_t: (L, ...) w_hh.T packed;
    bias: (L, G*H) the input-side bias (unused for layer 0, whose table holds it);
    b_hn: (L, H), GRU only;
    dec_t: decoder weight .T packed; dec_b: (V,); gates, hg: (B, G*H), hn: (B, H) and
    logits: (B, V) shared workspaces."""
    L, B, H = h.shape
    GH = table.shape[1]
    p0, p1 = split(hh_t[0].shape[0], nthreads, worker, 1)
    u0, u1 = split(H, nthreads, worker, UNIT_ALIGN)
    lo, hi = p0 * NR, min(GH, p1 * NR)  # the gate columns this worker's panels write
    for layer in range(L):
        hl = h[layer]
        for b in range(B):
            gates[b, lo:hi] = table[current[b], lo:hi] if layer == 0 else bias[layer][lo:hi]
        if layer > 0:
            gemm_block_n(h[layer - 1], ih_t[layer - 1], gates, 0, B, p0, p1, scratch)
        if cell == GRU:
            hg[:, lo:hi] = 0.0
            gemm_block_n(hl, hh_t[layer], hg, 0, B, p0, p1, scratch)
        else:
            gemm_block_n(hl, hh_t[layer], gates, 0, B, p0, p1, scratch)
        barrier(sync, nthreads)
        # Every read of this layer's old state is done: update it in place.
        if cell == LSTM:
            lstm_cell_forward(hl, c[layer], gates, c[layer], u0, u1)
        elif cell == GRU:
            gru_cell_forward(hl, gates, hn, hg, hl, b_hn[layer], u0, u1)
        else:
            for b in range(B):
                for j in range(u0, u1):
                    hl[b, j] = tanh(gates[b, j])
        barrier(sync, nthreads)
    q0, q1 = split(dec_t.shape[0], nthreads, worker, 1)
    for b in range(B):
        logits[b, q0 * NR:q1 * NR] = dec_b[q0 * NR:q1 * NR]
    gemm_block_n(h[L - 1], dec_t, logits, 0, B, q0, q1, scratch)
    barrier(sync, nthreads)


@parallel_kernel
def step_logits(logits, current, h, c, cell, table, ih_t, hh_t, bias, b_hn, dec_t, dec_b, nthreads):
    """One character: logits (B, V) out; h, c (L, B, H) advanced in place."""
    B, GH, H = h.shape[1], table.shape[1], h.shape[2]
    gates, hg, hn = np.empty((B, GH), h.dtype), np.empty((B, GH), h.dtype), np.empty((B, H), h.dtype)
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        scratch = tile_scratch(h)
        _advance(worker, nthreads, sync, cell, current, h, c, table, ih_t, hh_t, bias, b_hn, dec_t, dec_b,
                 gates, hg, hn, logits, scratch)


@parallel_kernel
def generate(out, current, h, c, cell, table, ih_t, hh_t, bias, b_hn, dec_t, dec_b,
             uniforms, temperature, top_k, top_p, use_argmax, nthreads):
    """K characters for each of B streams, each fed back as the next input.

    out: (K, B) the characters; current: (B,) in, the last character of each stream,
    out, the last one generated; h, c: (L, B, H) advanced in place; uniforms: (K, B)
    one number in [0, 1) per draw (see sampling.sample_rows); use_argmax: take the
    most likely character instead."""
    K, B = out.shape
    GH, H, V = table.shape[1], h.shape[2], dec_b.shape[0]
    gates, hg, hn = np.empty((B, GH), h.dtype), np.empty((B, GH), h.dtype), np.empty((B, H), h.dtype)
    logits = np.empty((B, V), h.dtype)
    choice = np.empty(B, np.int64)
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        scratch = tile_scratch(h)
        r0, r1 = split(B, nthreads, worker, 1)
        for k in range(K):
            _advance(worker, nthreads, sync, cell, current, h, c, table, ih_t, hh_t, bias, b_hn, dec_t, dec_b,
                     gates, hg, hn, logits, scratch)
            if r1 > r0:
                if use_argmax:
                    argmax_rows(choice[r0:r1], logits[r0:r1])
                else:
                    sample_rows(choice[r0:r1], logits[r0:r1], temperature, uniforms[k, r0:r1], top_k, top_p)
                for b in range(r0, r1):
                    out[k, b] = choice[b]
                    current[b] = choice[b]
            barrier(sync, nthreads)
