"""The time loops of recurrence.py with their recurrent products in bfloat16 (on AMX
tiles or AVX512-BF16, as kernels/amx.py multiplies), for training in precision bf16.

Per step, h_prev @ w_hh.T (forward) and the recurrent pre-activations' gradient @
w_hh (backward) are multiplied as amx.py multiplies the whole-batch products:
operands rounded to bfloat16, sums in float32 onto the float32 input side (forward)
or dh (backward). Measured on a 2-core Xeon, these step-sized products run twice as
fast as float32 tiles (`python -m benchmarks.probes.gemm_shapes --bf16`, "step"
rows), and they were more than half of a bf16 training step. The cells and every
state stay float32, as in PyTorch's bfloat16 autocast of an LSTM.

Each thread rounds the columns its own cell wrote into a shared (Mp, Kp) bfloat16
copy, which every thread's product then reads whole. There are two copies, used by
alternate steps: a thread that has finished step t may round step t+1's columns
while another thread still multiplies step t's, and the barrier at the end of each
step keeps any thread from getting two steps ahead. The threads split the products
by BLOCK columns as recurrence.py splits them by NR: by units, one barrier per
step, when H is a whole number of blocks per thread (recurrence.units_split), else by blocks
of all columns, two. These kernels compile only for a CPU with AMX-BF16 or AVX512-BF16.
"""

import numpy as np
from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.amx import BLOCK, bf16_bits, product_blocks, round_transposed_16, tile_configure, tile_release
from charrnn.kernels.recurrence import GRU, backward_share, cell_backward, cell_forward, forward_share, step_product
from charrnn.kernels.simd import BARRIER_SIZE, barrier


@kernel
def round_columns(dst, src, c0, c1):
    """dst[:B, c0:c1] = src[:, c0:c1] (B, *) rounded to bfloat16 bits."""
    for r in range(src.shape[0]):
        line, out = src[r, c0:c1], dst[r, c0:c1]
        for j in range(c1 - c0):
            out[j] = bf16_bits(line[j])


@kernel
def round_transposed_columns(dst, k0, sums, src, c0, c1):
    """dst[c, k0 + r] = src[r, c] rounded to bfloat16 bits and sums[c] += src[r, c] in
    the order of r, for c0 <= c < c1 and every row r of src (B, *). In 16 x 16 blocks
    transposed in registers, a last block of rows (or columns) short of 16 taken as
    the 16 that end there: it overlaps the block before and writes the same values
    again, where value by value it took several times as long (2 of B = 50 rows).
    Fewer than 16 rows or columns go value by value."""
    B = src.shape[0]
    if B < 16 or c1 - c0 < 16:
        for c in range(c0, c1):
            for r in range(B):
                dst[c, k0 + r] = bf16_bits(src[r, c])
    else:
        for cc in range(c0, c1, 16):
            c = min(cc, c1 - 16)
            for rr in range(0, B, 16):
                r = min(rr, B - 16)
                round_transposed_16(dst, c, k0 + r, src, r, c)
    acc = sums[c0:c1]
    for r in range(B):
        line = src[r, c0:c1]
        for j in range(c1 - c0):
            acc[j] += line[j]


@parallel_kernel
def recurrence_forward_bf16(cell, a, w_hh_bf, h_bf, configs, nthreads):
    """recurrence.recurrence_forward with bfloat16 products.  a: ForwardArrays
    (float32); w_hh_bf: w_hh.T packed by amx.pack_bf16 (panels(G*H), Kp/2, 2*BLOCK);
    h_bf: (2, Mp, Kp) uint16 zeros, Mp = padded(B), Kp = padded(H); configs:
    amx.tile_configs()."""
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        _forward_worker(worker, nthreads, sync, cell, a, w_hh_bf, h_bf, configs)


@kernel
def _forward_worker(worker, nthreads, sync, cell, a, w_hh_bf, h_bf, configs):
    """One worker's share (recurrence.forward_share, in blocks of BLOCK columns).
    Step t reads h_prev from h_bf[(t + 1) % 2] and rounds its h into h_bf[t % 2]."""
    T, B, H = a.hs.shape
    by_units, u0, u1, p0, p1, gates, gate_panels = forward_share(worker, nthreads, H, w_hh_bf.shape[0], BLOCK)
    tile_configure(configs[BLOCK])
    scratch = np.empty((BLOCK, BLOCK), np.float32)
    Mp = h_bf.shape[1]
    round_columns(h_bf[1], a.h0, u0, u1)
    barrier(sync, nthreads)
    for t in range(T):
        product = step_product(cell, a, t)
        for g in range(gates):
            q0, q1 = p0 + g * gate_panels, p1 + g * gate_panels
            if cell == GRU:
                product[:, q0 * BLOCK:min(product.shape[1], q1 * BLOCK)] = 0.0
            product_blocks(h_bf[(t + 1) % 2], w_hh_bf, product, 0, Mp, q0, q1, scratch, configs)
        if not by_units:
            barrier(sync, nthreads)
        cell_forward(cell, a, t, u0, u1)
        round_columns(h_bf[t % 2], a.hs[t], u0, u1)
        barrier(sync, nthreads)
    tile_release()


@parallel_kernel
def recurrence_backward_bf16(cell, g, w_hh_bf, d_bf, gates_t, sums, configs, nthreads):
    """recurrence.recurrence_backward with bfloat16 products.  g: BackwardArrays
    (float32); w_hh_bf: w_hh packed by amx.pack_bf16 (panels(H), padded(G*H)/2,
    2*BLOCK); d_bf: (2, Mp, padded(G*H)) uint16 zeros; configs: amx.tile_configs().
    Also, for w_hh's gradient: gates_t (at least G*H rows, T*B columns) uint16 gets
    the recurrent gradients transposed and rounded, gates_t[c, t*B + b] = dhg[t, b, c],
    and sums (G*H,) float32 += their sums over t and b (each in the order of t from
    T-1 down, then b)."""
    sync = np.zeros(BARRIER_SIZE, np.int64)
    for worker in prange(nthreads):
        _backward_worker(worker, nthreads, sync, cell, g, w_hh_bf, d_bf, gates_t, sums, configs)


@kernel
def _backward_worker(worker, nthreads, sync, cell, g, w_hh_bf, d_bf, gates_t, sums, configs):
    """One worker's share (recurrence.backward_share, in blocks of BLOCK columns).
    Step t rounds its recurrent gradient into d_bf[t % 2], and its own columns of it,
    transposed, into gates_t while they are still in cache: rounded afterwards, the
    transpose of all T*B rows was about 5% of a 2x256 step on a 2-core Zen 5."""
    T, B, H = g.dhs.shape
    by_units, u0, u1, p0, p1 = backward_share(worker, nthreads, H, w_hh_bf.shape[0], BLOCK)
    tile_configure(configs[BLOCK])
    scratch = np.empty((BLOCK, BLOCK), np.float32)
    tc, dct = np.empty(H, g.dh.dtype), np.empty(H, g.dh.dtype)
    Mp = d_bf.shape[1]
    for t in range(T - 1, -1, -1):
        recurrent = cell_backward(cell, g, t, u0, u1, tc, dct)
        for gate in range(recurrent.shape[1] // H):
            round_columns(d_bf[t % 2], recurrent, gate * H + u0, gate * H + u1)
        barrier(sync, nthreads)  # every thread's gradients of step t are in d_bf[t % 2]
        for gate in range(recurrent.shape[1] // H):  # after the barrier: the others wait for no more than the above
            round_transposed_columns(gates_t, t * B, sums, recurrent, gate * H + u0, gate * H + u1)
        if cell != GRU:
            g.dh[:, p0 * BLOCK:min(H, p1 * BLOCK)] = 0.0
        product_blocks(d_bf[t % 2], w_hh_bf, g.dh, 0, Mp, p0, p1, scratch, configs)
        if not by_units:  # by units, the next step's cell reads only dh's columns this thread wrote
            barrier(sync, nthreads)
    tile_release()
