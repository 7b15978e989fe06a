"""Matrix products on packed panels, split across threads.

B (K, N) is packed into panels Bp (ceil(N / NR), K, NR): panel p holds columns
p*NR .. p*NR+NR-1, zero-padded, so a tile's B rows are contiguous. Weights are
packed once per optimiser step and read every time step; activations are packed
when they are the B of a weight-gradient product.

Every product accumulates, C += opA @ B, and each element of C is one chain of
multiply-adds onto its old value, in the order of k, whichever thread and whichever
tile computes it: the result depends neither on the number of threads nor on the
other rows of A (a stream sampled alone equals it sampled in a batch).
"""

import numpy as np
from numba import prange

from charrnn.kernels import kernel, parallel_kernel
from charrnn.kernels.simd import MR, NR, ROW_SPAN, SHAPE, make_tile, move_row, portable_tile, prefetch

KC = 512  # rows of a panel per block, from L1 and L2
MC = 64 // MR * MR  # rows of A per block, whole tiles: MC x KC floats (about 128 KB) stay in L2
# A transposed A (the weight gradients' gate gradients, rows 4H floats apart) is packed
# a block at a time, each of its rows a page of its own: taller blocks read more of
# each row per page. lstm-2x256 on a 2-core Xeon (profile_step): its weight gradients
# took 39 ms a step with blocks of 60 rows, 24-25 with 126 or 252 (one run each).
MC_T_ROWS = 128  # MC_T: as many whole tiles as fit in these rows
MC_T = MC_T_ROWS // MR * MR
# The strips of a packed block of A.T lie KC + A_PAD rows of k apart. KC * MR floats
# is a multiple of 4 KB, so without the pad, packing one row of A (a group of MR
# floats into each strip) writes every strip's group to the same L1 cache set, and
# the 21-32 strips of a block evict each other from its 12 ways. On Zen 5, 2 threads,
# `python -m benchmarks.probes.gemm_shapes --hidden 512 [--isa avx2]`: the weight
# gradient went from 414 to 449 GFLOP/s at the avx512 level and from 213 to 246 at
# avx2, level with the other products (packing alone took 13% of it, now 2%).
A_PAD = 16
# Tiles are NR columns wide, or with MR rows also as narrow as one of these
# (simd.TileShape.narrow); a level with one narrow width gives it twice.
NARROW = (SHAPE.narrow + SHAPE.narrow)[:2] if SHAPE.narrow else (NR, NR)
VECTOR_TILES = SHAPE.vector_bytes > 0
LINE = 16  # float32 elements per 64-byte cache line (float64 prefetches every other line twice)
assert MR <= 8  # fewer than MR rows are tiles of 4, 2 and 1 rows


def panels(n: int) -> int:
    """How many NR-column panels hold n columns."""
    return (n + NR - 1) // NR


@kernel
def tile_cols(rows, width):
    """The width of the tile that computes `rows` rows of a panel's first `width`
    columns: for MR rows the narrowest of the narrow widths and NR that holds them,
    else NR. Portable tiles are loops: any width."""
    if not VECTOR_TILES:
        return width
    if rows == MR:
        if width <= NARROW[0]:
            return NARROW[0]
        if width <= NARROW[1]:
            return NARROW[1]
    return NR


if VECTOR_TILES:
    _NF, _N4, _N2, _N1 = (make_tile(m, False) for m in (MR, min(4, MR), 2, 1))
    # Narrow tiles come with MR rows only: a last panel's rare partial row tile takes
    # the full-width tiles into scratch, and each variant less saves compile time.
    _NA, _NB = (make_tile(MR, False, w) for w in NARROW)
    _TF, _T4, _T2, _T1 = (make_tile(m, True) for m in (MR, min(4, MR), 2, 1))
    _TA, _TB = (make_tile(MR, True, w) for w in NARROW)
    # One row of A against ROW_SPAN panels at once: the products of batch-1 sampling.
    _N1w = make_tile(1, False, NR, ROW_SPAN)

    @kernel
    def _tile_n(rows, cols, a, a0, bp, c, c0, cj, k0, k1):
        """One tile of A: 1 to MR rows by NR columns, or MR rows by a narrow width
        (cols, from tile_cols); see simd.make_tile."""
        if cols == NR:
            if rows == MR:
                _NF(a, a0, bp, c, c0, cj, k0, k1)
                return
            r = 0
            if MR > 4 and rows >= 4:
                _N4(a, a0, bp, c, c0, cj, k0, k1)
                r = 4
            if rows - r >= 2:
                _N2(a, a0 + r, bp, c, c0 + r, cj, k0, k1)
                r += 2
            if rows - r >= 1:
                _N1(a, a0 + r, bp, c, c0 + r, cj, k0, k1)
        elif cols == NARROW[0]:
            _NA(a, a0, bp, c, c0, cj, k0, k1)
        else:
            _NB(a, a0, bp, c, c0, cj, k0, k1)

    @kernel
    def _tile_t(rows, cols, strip, bp, c, c0, cj, k):
        """One tile of a packed strip of A.T (k, MR), rows and cols as in _tile_n;
        see simd.make_tile."""
        if cols == NR:
            if rows == MR:
                _TF(strip, 0, bp, c, c0, cj, 0, k)
                return
            r = 0
            if MR > 4 and rows >= 4:
                _T4(strip, 0, bp, c, c0, cj, 0, k)
                r = 4
            if rows - r >= 2:
                _T2(strip, r, bp, c, c0 + r, cj, 0, k)
                r += 2
            if rows - r >= 1:
                _T1(strip, r, bp, c, c0 + r, cj, 0, k)
        elif cols == NARROW[0]:
            _TA(strip, 0, bp, c, c0, cj, 0, k)
        else:
            _TB(strip, 0, bp, c, c0, cj, 0, k)

    @kernel
    def _one_row(a, r0, bp, c, p0, p1):
        """c[r0, panels p0..p1, whole ones] += a[r0] @ those panels, in tiles ROW_SPAN
        panels wide, then one panel wide."""
        K = bp.shape[1]
        for p in range(p0, p1 - ROW_SPAN + 1, ROW_SPAN):
            _N1w(a, r0, bp[p], c, r0, p * NR, 0, K)
        for p in range(p1 - (p1 - p0) % ROW_SPAN, p1):
            _N1(a, r0, bp[p], c, r0, p * NR, 0, K)

else:
    @kernel
    def _tile_n(rows, cols, a, a0, bp, c, c0, cj, k0, k1):
        portable_tile(rows, cols, False, a, a0, bp, c, c0, cj, k0, k1)

    @kernel
    def _tile_t(rows, cols, strip, bp, c, c0, cj, k):
        portable_tile(rows, cols, True, strip, 0, bp, c, c0, cj, 0, k)

    @kernel
    def _one_row(a, r0, bp, c, p0, p1):
        K = bp.shape[1]
        for p in range(p0, p1):
            portable_tile(1, NR, False, a, r0, bp[p], c, r0, p * NR, 0, K)


@kernel
def split(n, parts, part, align):
    """The range [start, stop) of part `part` of `parts` near-equal pieces of range(n),
    with boundaries at multiples of align."""
    units = (n + align - 1) // align
    start = min(n, (units * part // parts) * align)
    stop = min(n, (units * (part + 1) // parts) * align)
    return start, stop


@kernel
def pack_panels(bp, b, transpose, p0, p1, k_offset):
    """Panels p0..p1 of bp (npan, K, NR), rows k_offset.. , from B (k, N), or from
    W (N, k) with B = W.T when transpose. Columns past N are zero."""
    K = b.shape[1] if transpose else b.shape[0]
    N = b.shape[0] if transpose else b.shape[1]
    for p in range(p0, p1):
        panel = bp[p, k_offset:k_offset + K]
        width = min(NR, N - p * NR)
        if transpose:
            for j in range(width):
                row = b[p * NR + j]
                for k in range(K):
                    panel[k, j] = row[k]
        else:
            for k in range(K):
                src = b[k, p * NR:p * NR + width]
                dst = panel[k]
                for j in range(width):
                    dst[j] = src[j]
        for k in range(K):
            for j in range(width, NR):
                panel[k, j] = 0.0


@parallel_kernel
def pack(bp, b, transpose, nthreads):
    """bp (panels(N), K, NR) = B packed, B = b (K, N), or b.T for b (N, K) when transpose."""
    npan = bp.shape[0]
    for t in prange(nthreads):
        p0, p1 = split(npan, nthreads, t, 1)
        pack_panels(bp, b, transpose, p0, p1, 0)


@kernel
def gemm_block(a, trans_a, bp, c, sums, r0, r1, p0, p1, scratch, a_pack):
    """c[r0:r1, panel columns p0..p1] += opA[r0:r1] @ B[:, same columns].

    a: (M, K), or (K, M) when trans_a; bp: B packed (npan, K, NR); c: (M, N).
    sums: (0,), or with trans_a (M,): sums[r0:r1] += the sums of those rows of
    opA, taken as A is packed (a bias gradient without a pass of its own). Each
    block of A is packed once per call, so a caller asking for sums gives one
    call all the panels (as gemm does).
    scratch: (MR, NR) for the last panel when N is not a multiple of NR.
    a_pack: (MC_T // MR, KC + A_PAD, MR) workspace: with trans_a, each block of A is copied
    there first, so that a tile reads contiguous memory instead of one cache line
    per k."""
    if trans_a:
        _gemm_block_t(a, bp, c, sums, r0, r1, p0, p1, scratch, a_pack)
    else:
        gemm_block_n(a, bp, c, r0, r1, p0, p1, scratch)


@kernel
def gemm_block_n(a, bp, c, r0, r1, p0, p1, scratch):
    """gemm_block without transposing A (what the time loops use: it compiles
    half the tile variants). bp must be C-contiguous: a single row takes ROW_SPAN
    consecutive panels in one tile."""
    K = bp.shape[1]
    N = c.shape[1]
    if r1 - r0 == 1:
        # One row streams each weight once: wide tiles over whole panels; the k blocks
        # serve no cache here, and each element's sum runs in the same order without them.
        full = max(p0, min(p1, N // NR))
        _one_row(a, r0, bp, c, p0, full)
        p0 = full  # the last panel, if partial, takes the general path
    for k0 in range(0, K, KC):
        k1 = min(K, k0 + KC)
        for i0 in range(r0, r1, MC):
            i1 = min(r1, i0 + MC)
            for p in range(p0, p1):
                panel = bp[p]
                cj = p * NR
                width = min(NR, N - cj)
                for i in range(i0, i1, MR):
                    rows = min(MR, i1 - i)
                    cols = tile_cols(rows, width)
                    if k0 == 0:
                        _prefetch_next_tile(c, i, i0, i1, cj, N, p + 1 < p1)
                    if width == cols:
                        _tile_n(rows, cols, a, i, panel, c, i, cj, k0, k1)
                    else:
                        _load_tile(scratch, c, i, cj, rows, width)
                        _tile_n(rows, cols, a, i, panel, scratch, 0, 0, k0, k1)
                        _store_tile(c, scratch, i, cj, rows, width)


@kernel
def _prefetch_next_tile(c, i, i0, i1, cj, N, more_panels):
    """Prefetch the rows of C the tile after (i, cj) starts from (the next rows, or
    the next panel's first rows): a tile begins by loading them, and C (a time
    step's input side) has often left the caches since it was written."""
    if i + MR < i1:
        i, i1 = i + MR, min(i1, i + 2 * MR)
    elif more_panels:
        i, i1, cj = i0, min(i1, i0 + MR), cj + NR
    else:
        return
    for r in range(i, i1):
        for j in range(cj, min(N, cj + NR), LINE):
            prefetch(c, r, j)


@kernel
def _gemm_block_t(a, bp, c, sums, r0, r1, p0, p1, scratch, a_pack):
    """gemm_block for opA = a.T, each block of A packed into a_pack first (and
    summed into sums unless it is empty)."""
    K = bp.shape[1]
    N = c.shape[1]
    for k0 in range(0, K, KC):
        k1 = min(K, k0 + KC)
        for i0 in range(r0, r1, MC_T):
            i1 = min(r1, i0 + MC_T)
            _pack_a_block(a_pack, a, sums, i0, i1, k0, k1)
            for p in range(p0, p1):
                panel = bp[p, k0:k1]
                cj = p * NR
                width = min(NR, N - cj)
                for i in range(i0, i1, MR):
                    rows = min(MR, i1 - i)
                    # The packed strip holds opA[i:i+MR, k0:k1] as (k1-k0, MR): a transposed tile.
                    strip = a_pack[(i - i0) // MR]
                    cols = tile_cols(rows, width)
                    if width == cols:
                        _tile_t(rows, cols, strip, panel, c, i, cj, k1 - k0)
                    else:
                        _load_tile(scratch, c, i, cj, rows, width)
                        _tile_t(rows, cols, strip, panel, scratch, 0, 0, k1 - k0)
                        _store_tile(c, scratch, i, cj, rows, width)


@kernel
def _load_tile(scratch, c, i, cj, rows, width):
    """scratch (MR, NR) = c[i:i+rows, cj:cj+width], zeros around it. A tile computed
    there continues each element's own sum, as a tile computed in c would: a row's
    result does not depend on the tile it falls in (a narrow tile in c, or scratch)."""
    scratch[:] = 0.0
    for r in range(rows):
        for j in range(width):
            scratch[r, j] = c[i + r, cj + j]


@kernel
def _store_tile(c, scratch, i, cj, rows, width):
    for r in range(rows):
        for j in range(width):
            c[i + r, cj + j] = scratch[r, j]


@kernel
def _pack_a_block(a_pack, a, sums, i0, i1, k0, k1):
    """a_pack[s, k - k0, r] = a[k, i0 + MR*s + r], zero past i1: rows of opA = a.T.
    Each row of a is read once, contiguously, across all strips; unless sums is
    empty, it is also added to sums[i0:i1] (row by row: the order of a plain
    column sum)."""
    full = (i1 - i0) // MR
    strips = (i1 - i0 + MR - 1) // MR
    kc = a_pack.shape[1]
    for k in range(k0, k1):
        row = a[k, i0:i1]
        kk = k - k0
        for s in range(full):
            move_row(a_pack, (s * kc + kk) * MR, row, MR * s)
        for s in range(full, strips):
            for r in range(MR):
                i = MR * s + r
                a_pack[s, kk, r] = row[i] if i < i1 - i0 else 0.0
        if sums.shape[0] > 0:
            acc = sums[i0:i1]
            for j in range(i1 - i0):
                acc[j] += row[j]


@kernel
def tile_scratch(like):
    """The per-thread (MR, NR) array for a last, partial panel (gemm_block_n)."""
    return np.empty((MR, NR), like.dtype)


@kernel
def gemm_workspaces(like):
    """The per-thread arrays gemm_block needs: tile scratch and A packing."""
    return tile_scratch(like), np.empty((MC_T // MR, KC + A_PAD, MR), like.dtype)


@parallel_kernel
def gemm(a, trans_a, bp, c, sums, nthreads):
    """c += opA @ B with B packed in bp, split across nthreads threads: by rows of c
    when it has many, else by panels. sums: (0,), or with trans_a (M,) to which the
    row sums of opA are added (see gemm_block)."""
    M = c.shape[0]
    npan = bp.shape[0]
    # Transposed A is packed block by block: splitting by rows packs each block once,
    # which the row sums rely on (split by panels, every thread would add them).
    # Many rows split evenly; a few panels may not (11 panels: 6 against 5).
    by_rows = trans_a or M >= 256 or (M >= 4 * MR * nthreads and npan < 4 * nthreads)
    for t in prange(nthreads):
        scratch, a_pack = gemm_workspaces(c)
        if by_rows:
            r0, r1 = split(M, nthreads, t, MR)
            gemm_block(a, trans_a, bp, c, sums, r0, r1, 0, npan, scratch, a_pack)
        else:
            p0, p1 = split(npan, nthreads, t, 1)
            gemm_block(a, trans_a, bp, c, sums, 0, M, p0, p1, scratch, a_pack)

