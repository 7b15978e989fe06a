"""The time loop of one recurrent layer, forward and backward, for every cell.

The input side of every step (x @ w_ih.T + biases) is computed before the loop, as
one matrix product over all T*B rows; these kernels run what cannot be batched over
time. Each of the nthreads threads computes a share of the recurrent product (by
panels of columns) and a share of the cell (by units), and the threads meet at a
barrier after each, so one parallel region runs the whole loop. When the hidden
size is a whole number of panels per thread (unit_panels), a thread's share of the
product is the columns of its own units, and one barrier per step does.

The three cells share that scaffolding and differ in where the recurrent product
goes and in the cell itself (lstm.py, gru.py, rnn.py): the cell is a runtime code,
so one compiled kernel serves all three.
"""

from collections import namedtuple

import numpy as np
from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.gemm import gemm_block_n, split, tile_scratch
from charrnn.kernels.gru import gru_cell_backward, gru_cell_forward
from charrnn.kernels.lstm import lstm_cell_backward, lstm_cell_forward
from charrnn.kernels.rnn import rnn_cell_backward, rnn_cell_forward
from charrnn.kernels.simd import BARRIER_SIZE, NR, SHAPE, barrier

LSTM, GRU, RNN = 0, 1, 2  # cell codes
CELL_CODES = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
UNIT_ALIGN = SHAPE.lanes(4)  # units per thread start at whole float32 vectors

# One layer's arrays for a forward pass over (T, B). A cell without an array gets
# an empty one of the same number of dimensions, so that every cell shares one type.
#   hs: (T, B, H) out; for the RNN, the input side in (both biases added), as it is
#       replaced step by step
#   cs: (T, B, H) out, LSTM
#   acts: (T, B, G*H) the input side in (biases included; GRU: b_hn excepted),
#       gate activations out; LSTM and GRU
#   hn: (T, B, H) out, GRU: W_hn h + b_hn, which n's gradient w.r.t. r needs
#   hg: (B, 3H) workspace, GRU: the recurrent product of one step
#   h0, c0: (B, H) the initial state (c0: LSTM)
#   b_hn: (H,) GRU
ForwardArrays = namedtuple("ForwardArrays", ["hs", "cs", "acts", "hn", "hg", "h0", "c0", "b_hn"])

# One layer's arrays for backpropagation through the loop, T and B as above.
#   acts: LSTM: the activations in, the gradient w.r.t. the pre-activations out, in
#       their place; GRU: the activations in
#   dxg: (T, B, G*H) out, the gradient w.r.t. the input-side pre-activations (GRU, RNN)
#   dhg: (T, B, 3H) out, GRU: w.r.t. the recurrent-side pre-activations
#   dh, dc: (B, H) in, w.r.t. the final state (zero when truncating); out, w.r.t.
#       the initial state (dc: LSTM)
#   dhs: (T, B, H) from the layer above
#   hs, h0, cs, c0, hn: from the forward pass
BackwardArrays = namedtuple("BackwardArrays", ["acts", "dxg", "dhg", "dh", "dc", "dhs", "hs", "h0", "cs", "c0",
                                               "hn"])


# Each parallel kernel below is a prange over workers that calls a worker function:
# writes through a namedtuple's arrays made directly in a prange body are lost
# (numba issues 7135 and 10338), while a called function writes them as usual.


@kernel
def units_split(H, width, nthreads):
    """Whether each thread can own whole panels (of `width` columns) of every gate
    block: H a multiple of width, split evenly. The threads then split the
    recurrent product by units, as they split the cell, so that a thread's cell
    reads only gates it computed itself (forward) and its product writes only the
    state gradient its own cell reads next (backward): one barrier per step instead
    of two."""
    return H % width == 0 and (H // width) % nthreads == 0


@kernel
def unit_panels(H, nthreads):
    """units_split for the float32 tiles' panels of NR columns."""
    return units_split(H, NR, nthreads)


@kernel
def forward_share(worker, nthreads, H, npan, width):
    """A worker's share of a forward loop whose product has npan panels of `width`
    columns: (by_units, u0, u1, p0, p1, gates, gate_panels). Units u0..u1 of every
    step's cell; of the product, by units (units_split), the columns of those units
    in every gate block (panels p0..p1 in the first, gate g's g * gate_panels
    further), else panels p0..p1 of all columns (one "gate")."""
    if units_split(H, width, nthreads):
        u0, u1 = split(H, nthreads, worker, width)
        return True, u0, u1, u0 // width, u1 // width, npan * width // H, H // width
    u0, u1 = split(H, nthreads, worker, UNIT_ALIGN)
    p0, p1 = split(npan, nthreads, worker, 1)
    return False, u0, u1, p0, p1, 1, 0


@kernel
def backward_share(worker, nthreads, H, npan, width):
    """A worker's share of a backward loop whose product (into dh) has npan panels
    of `width` columns: (by_units, u0, u1, p0, p1), units u0..u1 of the cell and
    panels p0..p1 of the product, the same columns by units (units_split)."""
    p0, p1 = split(npan, nthreads, worker, 1)
    if units_split(H, width, nthreads):
        return True, p0 * width, p1 * width, p0, p1
    u0, u1 = split(H, nthreads, worker, UNIT_ALIGN)
    return False, u0, u1, p0, p1


@parallel_kernel
def recurrence_forward(cell, a, w_hh_t, nthreads):
    """The time loop of one layer.  a: ForwardArrays; w_hh_t: w_hh.T packed
    (panels(G*H), H, NR)."""
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        _forward_worker(worker, nthreads, sync, cell, a, w_hh_t)


@kernel
def _forward_worker(worker, nthreads, sync, cell, a, w_hh_t):
    """One worker's share of recurrence_forward (forward_share)."""
    T, B, H = a.hs.shape
    by_units, u0, u1, p0, p1, gates, gate_panels = forward_share(worker, nthreads, H, w_hh_t.shape[0], NR)
    scratch = tile_scratch(a.hs)
    for t in range(T):
        h_prev = a.h0 if t == 0 else a.hs[t - 1]
        product = step_product(cell, a, t)
        for g in range(gates):
            q0, q1 = p0 + g * gate_panels, p1 + g * gate_panels
            if cell == GRU:
                product[:, q0 * NR:min(product.shape[1], q1 * NR)] = 0.0
            gemm_block_n(h_prev, w_hh_t, product, 0, B, q0, q1, scratch)
        if not by_units:
            barrier(sync, nthreads)
        cell_forward(cell, a, t, u0, u1)
        barrier(sync, nthreads)


@kernel
def step_product(cell, a, t):
    """Where step t's recurrent product goes: onto the input side, but for the GRU,
    whose n gate needs it apart (r multiplies it)."""
    if cell == GRU:
        return a.hg
    if cell == LSTM:
        return a.acts[t]
    return a.hs[t]


@kernel
def cell_forward(cell, a, t, u0, u1):
    """Units u0..u1 of step t's cell, its recurrent product in step_product."""
    if cell == LSTM:
        lstm_cell_forward(a.hs[t], a.cs[t], a.acts[t], a.c0 if t == 0 else a.cs[t - 1], u0, u1)
    elif cell == GRU:
        gru_cell_forward(a.hs[t], a.acts[t], a.hn[t], a.hg, a.h0 if t == 0 else a.hs[t - 1], a.b_hn, u0, u1)
    else:
        rnn_cell_forward(a.hs[t], u0, u1)


@parallel_kernel
def recurrence_backward(cell, g, w_hh, nthreads):
    """Backpropagation through the time loop of recurrence_forward.  g:
    BackwardArrays; w_hh: w_hh packed (panels(H), G*H, NR)."""
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        _backward_worker(worker, nthreads, sync, cell, g, w_hh)


@kernel
def _backward_worker(worker, nthreads, sync, cell, g, w_hh):
    """One worker's share of recurrence_backward (backward_share)."""
    T, B, H = g.dhs.shape
    by_units, u0, u1, p0, p1 = backward_share(worker, nthreads, H, w_hh.shape[0], NR)
    scratch = tile_scratch(g.dh)
    tc, dct = np.empty(H, g.dh.dtype), np.empty(H, g.dh.dtype)
    for t in range(T - 1, -1, -1):
        recurrent = cell_backward(cell, g, t, u0, u1, tc, dct)
        barrier(sync, nthreads)  # every thread's gradients of step t are in `recurrent`
        if cell != GRU:
            g.dh[:, p0 * NR:min(H, p1 * NR)] = 0.0
        gemm_block_n(recurrent, w_hh, g.dh, 0, B, p0, p1, scratch)
        if not by_units:  # by units, the next step's cell reads only dh's columns this thread wrote
            barrier(sync, nthreads)


@kernel
def cell_backward(cell, g, t, u0, u1, tc, dct):
    """Units u0..u1 of step t's cell, backward. Leaves in dh what reaches h_prev
    other than through w_hh (the GRU's z * h_prev; nothing for the others), and
    returns the gradient w.r.t. the recurrent pre-activations, (B, G*H), which the
    recurrent product takes back to h_prev. tc, dct: (H,) workspaces."""
    if cell == LSTM:
        lstm_cell_backward(g.acts[t], g.dh, g.dc, g.dhs[t], g.cs[t], g.c0 if t == 0 else g.cs[t - 1],
                           u0, u1, tc, dct)
        return g.acts[t]
    if cell == GRU:
        gru_cell_backward(g.dxg[t], g.dhg[t], g.dh, g.dhs[t], g.acts[t], g.hn[t], g.h0 if t == 0 else g.hs[t - 1],
                          u0, u1)
        return g.dhg[t]
    rnn_cell_backward(g.dxg[t], g.dh, g.dhs[t], g.hs[t], u0, u1)
    return g.dxg[t]
