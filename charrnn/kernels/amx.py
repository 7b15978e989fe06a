"""bfloat16 matrix products on AMX tiles, or where the CPU has no AMX on AVX512-BF16
(kernels/dpbf16.py), for training with precision bf16.

Intel's AMX (Sapphire Rapids and later) multiplies whole tiles: one tdpbf16ps adds a
(16, 32) bfloat16 tile times a (32, 16) one into a (16, 16) float32 tile. Measured
on a 2-core Xeon, 2 threads, the products of a training step run 2-3 times as fast
as gemm.py's float32 tiles (`python -m benchmarks.probes.gemm_shapes --bf16`). Only the
operands are rounded to bfloat16; every sum is float32, onto C's float32 values.
Everything here but the block product serves both units: they read the same
layouts. Which one runs is the process's (kernels.ISA.bf16, chosen in charrnn.isa);
under AVX512-BF16 the tile configuration intrinsics compile to nothing.

Layouts (bfloat16 values kept as uint16 bits):
  A: (Mp, Kp) rows of opA, Mp and Kp multiples of BLOCK, zero-padded (to_bf16).
  B: panels (npan, Kp / 2, 2 * BLOCK): panel p holds columns p*BLOCK.. of B with
     each row kp holding, for every column j, B[2kp, j] and B[2kp+1, j] side by side
     (the pairs tdpbf16ps multiplies), zero-padded (pack_panels_bf16).
  C: any float32 (M, N) with a contiguous last axis.

The tile registers are configured per thread (ldtilecfg) at the start of each
thread's work and released at its end; the process must first be allowed to use
them (charrnn.isa.enable_bf16). These kernels compile only for a CPU with AMX-BF16 or
AVX512-BF16.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from charrnn.kernels import ISA, kernel, parallel_kernel
from charrnn.kernels.dpbf16 import BFloat, array_bytes, block_operands, rows_product
from charrnn.kernels.gemm import split

AMX = ISA.bf16 == "amx"  # else the block products are AVX512-BF16's

BLOCK = 32  # rows and columns of C per block: 2 x 2 tiles of (16, 16) float32
TILE_ROWS = 16
KB = 32  # bfloat16 values of k per tile product (a 64-byte tile row)

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_P8 = _I8.as_pointer()


def _call(builder, name, arg_types, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), arg_types), name)
    builder.call(fn, args)


@intrinsic
def tile_configure(typingctx, config):
    """Load the tile configuration (a 64-byte uint8 array, a row of tile_configs) into
    this thread's tile registers (nothing without AMX)."""
    sig = types.void(config)

    def codegen(context, builder, signature, args):
        if AMX:
            ptr, _ = array_bytes(context, builder, signature.args[0], args[0])
            _call(builder, "llvm.x86.ldtilecfg", [_P8], [ptr])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def tile_release(typingctx):
    """Return this thread's tile registers to their initial state (the kernel
    leaves no AMX state for the OS to save on each switch; nothing without AMX)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if AMX:
            _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()

    return sig, codegen


def _block_product(halves):
    """An intrinsic for C[c0:c0+rows, cj:cj+32] += A[a0:a0+rows, :32*kblocks] @
    (panel p of bp)[:32*kblocks], where rows are those the loaded tile configuration
    gives the tiles of its `halves` row halves (16 each, fewer in a last block).

    A (Mp, Kp) and bp (npan, Kp/2, 64) uint16 as the module describes; C float32.
    Tiles 0-1 (2-3) hold C's upper (lower) two (16, 16) quarters, 4 (5) A's upper
    (lower) rows, 6-7 B's two column halves; each k block is 2 * halves tile
    products. No bounds checks."""

    @intrinsic
    def product(typingctx, a, a0, bp, p, c, c0, cj, kblocks):
        sig = types.void(a, a0, bp, p, c, c0, cj, kblocks)

        def codegen(context, builder, signature, args):
            pa, pb, pc, a0_, p_, c0_, cj_, kb_, lda, ldc, panel_stride, ldb = block_operands(
                context, builder, signature, args)
            load, store = ("llvm.x86.tileloadd64", [_I8, _P8, _I64]), ("llvm.x86.tilestored64", [_I8, _P8, _I64])
            c_base = builder.add(builder.mul(c0_, ldc), builder.mul(cj_, _I64(4)))
            c_tiles = range(2 * halves)
            c_ptrs = [builder.gep(pc, [builder.add(c_base, builder.add(builder.mul(ldc, _I64(TILE_ROWS * (t // 2))),
                                                                      _I64(64 * (t % 2))))]) for t in c_tiles]
            for t in c_tiles:
                _call(builder, *load, [_I8(t), c_ptrs[t], ldc])
            a_base = builder.mul(a0_, lda)
            a_half = builder.mul(lda, _I64(TILE_ROWS))
            b_base = builder.mul(p_, panel_stride)
            b_step = builder.mul(ldb, _I64(KB // 2))
            with cgutils.for_range(builder, kb_) as loop:
                a_ptr = builder.gep(pa, [builder.add(a_base, builder.mul(loop.index, _I64(2 * KB)))])
                b_ptr = builder.gep(pb, [builder.add(b_base, builder.mul(loop.index, b_step))])
                _call(builder, *load, [_I8(4), a_ptr, lda])
                if halves == 2:
                    _call(builder, *load, [_I8(5), builder.gep(a_ptr, [a_half]), lda])
                _call(builder, *load, [_I8(6), b_ptr, ldb])
                _call(builder, *load, [_I8(7), builder.gep(b_ptr, [_I64(64)]), ldb])
                for dst, src_a, src_b in ((0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7))[:2 * halves]:
                    _call(builder, "llvm.x86.tdpbf16ps", [_I8, _I8, _I8], [_I8(dst), _I8(src_a), _I8(src_b)])
            for t in c_tiles:
                _call(builder, *store, [_I8(t), c_ptrs[t], ldc])
            return context.get_dummy_value()

        return sig, codegen

    return product


block_product = _block_product(2)  # a whole block, or a last one of more than 16 rows
half_block_product = _block_product(1)  # a last block of at most 16 rows


@kernel
def amx_block_rows(a_bf, a0, bp, p, c, c0, cj, kblocks, rows):
    """C[c0:c0+rows, cj:cj+32] += A[a0:a0+rows] @ panel p, under configs[rows]."""
    if rows > TILE_ROWS:
        block_product(a_bf, a0, bp, p, c, c0, cj, kblocks)
    else:
        half_block_product(a_bf, a0, bp, p, c, c0, cj, kblocks)


# One unit's block product for the process; the other is never compiled (an AMX
# instruction cannot even be compiled for a CPU without AMX).
block_rows = amx_block_rows if AMX else rows_product


@intrinsic
def bf16_bits(typingctx, x):
    """float32 x rounded to the nearest bfloat16 (ties to even), as its uint16 bits.
    LLVM lowers it to vcvtneps2bf16, which takes a subnormal x as zero: far below
    anything a product here can resolve next to normal values."""
    if x != types.float32:
        return None
    sig = types.uint16(x)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], BFloat()), _I16)

    return sig, codegen


def tile_configs() -> np.ndarray:
    """(BLOCK + 1, 64) uint8: row r the tile configuration for blocks of r rows
    (row BLOCK for whole blocks, which every kernel here loads first; row 0 unused).
    Palette 1; tiles 6-7 (B) 16 rows of 64 bytes; C's and A's tiles 16 rows each,
    but for a block of r < BLOCK rows the last ones hold what is left of r (a block
    of at most 16 rows uses its upper half only, half_block_product). A last block
    of fewer rows is then loaded, multiplied and stored as it is: a block that went
    through a scratch copy cost as much again as a whole one, as AMX tile stores and
    the scalar loads after them (and scalar stores and the tile loads after those)
    do not forward to each other."""
    configs = np.zeros((BLOCK + 1, 64), np.uint8)
    for rows in range(1, BLOCK + 1):
        config = configs[rows]
        config[0] = 1
        config[16:32].view(np.uint16)[:8] = 64
        upper, lower = min(rows, TILE_ROWS), max(rows - TILE_ROWS, 0) or TILE_ROWS
        config[48:56] = (upper, upper, lower, lower, upper, lower, TILE_ROWS, TILE_ROWS)
    return configs


@kernel
def padded(n):
    """n rounded up to a whole number of blocks."""
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _transpose_masks():
    """The shuffles that transpose 16 vectors of 16 in four stages: at stage b (8, 4,
    2, 1), rows i and i + b (i & b == 0) swap their off-diagonal runs of b, each new
    row taken from the 32 lanes of the two, (b, mask of row i, mask of row i + b)."""
    stages = []
    for b in (8, 4, 2, 1):
        lo, hi = [], []
        for c in range(0, 16, 2 * b):
            lo += list(range(c, c + b)) + list(range(16 + c, 16 + c + b))
            hi += list(range(c + b, c + 2 * b)) + list(range(16 + c + b, 16 + c + 2 * b))
        stages.append((b, lo, hi))
    return stages


@intrinsic
def round_transposed_16(typingctx, dst, d0, dcol, src, s0, scol):
    """dst[d0 + j, dcol + i] = src[s0 + i, scol + j] rounded to bfloat16 bits, for i, j
    < 16: one 16 x 16 block rounded and transposed in registers (16 vector loads and
    conversions, 64 shuffles, 16 stores). dst uint16 and src float32, 2-D with
    contiguous rows. No bounds checks.

    Value by value (a 2-byte store each, to another row of dst each time), rounding
    the transposed gate gradients of a weight gradient ran at 3 ns a value on a
    2-core Xeon, as long as the product itself."""
    sig = types.void(dst, d0, dcol, src, s0, scol)

    def codegen(context, builder, signature, args):
        pd, arr_d = array_bytes(context, builder, signature.args[0], args[0])
        ps, arr_s = array_bytes(context, builder, signature.args[3], args[3])
        d0_, dcol_, s0_, scol_ = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 2, 4, 5))
        ldd = cgutils.unpack_tuple(builder, arr_d.strides, 2)[0]  # bytes
        lds = cgutils.unpack_tuple(builder, arr_s.strides, 2)[0]
        floats, halves = ir.VectorType(ir.FloatType(), 16), ir.VectorType(_I16, 16)
        rows = []
        for i in range(16):
            offset = builder.add(builder.mul(builder.add(s0_, _I64(i)), lds), builder.mul(scol_, _I64(4)))
            x = builder.load(builder.bitcast(builder.gep(ps, [offset]), floats.as_pointer()), align=4)
            rows.append(builder.bitcast(builder.fptrunc(x, ir.VectorType(BFloat(), 16)), halves))
        for b, lo, hi in _transpose_masks():
            new = list(rows)
            for i in range(16):
                if not i & b:
                    new[i] = builder.shuffle_vector(rows[i], rows[i + b], ir.Constant(ir.VectorType(_I32, 16), lo))
                    new[i + b] = builder.shuffle_vector(rows[i], rows[i + b], ir.Constant(ir.VectorType(_I32, 16), hi))
            rows = new
        for j in range(16):
            offset = builder.add(builder.mul(builder.add(d0_, _I64(j)), ldd), builder.mul(dcol_, _I64(2)))
            builder.store(rows[j], builder.bitcast(builder.gep(pd, [offset]), halves.as_pointer()), align=2)
        return context.get_dummy_value()

    return sig, codegen


@kernel
def to_bf16_rows(dst, src, transpose, sums, r0, r1):
    """Rows r0..r1 of dst (Mp, Kp) = opA's rows, rounded to bfloat16, zero past its
    columns; opA = src (M, K), or src.T for src (K, M) when transpose. Rows past M
    are zero. Unless sums is empty, sums[r] += the sum of opA's row r, taken row by
    row of src in float32 (the order of a plain column sum)."""
    M = src.shape[1] if transpose else src.shape[0]
    K = src.shape[0] if transpose else src.shape[1]
    dst[max(r0, min(r1, M)):r1] = 0
    r1 = min(r1, M)
    dst[r0:r1, K:] = 0
    if not transpose:
        for r in range(r0, r1):
            line, row = src[r], dst[r]
            for k in range(K):
                row[k] = bf16_bits(line[k])
        return
    # Sixteen columns of src at a time, down all its rows: whole 16 x 16 blocks are
    # transposed in registers, the rest value by value; each sum is added as its
    # block is read (still in L1), in the order of the rows.
    whole = K // 16 * 16
    for c0 in range(r0, r1, 16):
        n = min(16, r1 - c0)
        acc = sums[c0:c0 + n] if sums.shape[0] > 0 else sums
        for k0 in range(0, K, 16):
            if n == 16 and k0 < whole:
                round_transposed_16(dst, c0, k0, src, k0, c0)
            else:
                for k in range(k0, min(K, k0 + 16)):
                    for r in range(n):
                        dst[c0 + r, k] = bf16_bits(src[k, c0 + r])
            if acc.shape[0] > 0:
                for k in range(k0, min(K, k0 + 16)):
                    line = src[k, c0:c0 + n]
                    for r in range(n):
                        acc[r] += line[r]


@kernel
def pack_panels_bf16(bp, b, transpose, p0, p1):
    """Panels p0..p1 of bp (npan, Kp/2, 2*BLOCK) from B (K, N), or from W (N, K)
    with B = W.T when transpose; zero past K and N. Each row of b is read whole."""
    K = b.shape[1] if transpose else b.shape[0]
    N = b.shape[0] if transpose else b.shape[1]
    for p in range(p0, p1):
        panel = bp[p]
        panel[:] = 0
        width = min(BLOCK, N - p * BLOCK)
        if transpose:
            for j in range(width):
                line = b[p * BLOCK + j]
                for k in range(K):
                    panel[k // 2, 2 * j + k % 2] = bf16_bits(line[k])
        else:
            for k in range(K):
                line, row = b[k, p * BLOCK:p * BLOCK + width], panel[k // 2]
                half = k % 2
                for j in range(width):
                    row[2 * j + half] = bf16_bits(line[j])


@parallel_kernel
def pack_bf16(bp, b, transpose, nthreads):
    """bp (ceil(N / BLOCK), padded(K) / 2, 2 * BLOCK) = B packed in bfloat16 pairs,
    B = b (K, N), or b.T for b (N, K) when transpose."""
    for t in prange(nthreads):
        p0, p1 = split(bp.shape[0], nthreads, t, 1)
        pack_panels_bf16(bp, b, transpose, p0, p1)


@kernel
def product_blocks(a_bf, bp, c, i0, i1, p0, p1, scratch, configs):
    """C's blocks of rows i0..i1 (multiples of BLOCK, i1 up to Mp) and panels p0..p1,
    with configs[BLOCK] loaded (tile_configs). A last block of r < BLOCK rows runs
    under configs[r]; a block short of columns (a last panel) is computed in scratch
    (BLOCK, BLOCK) from C's values and zeros, and copied back."""
    M = c.shape[0]
    kblocks = a_bf.shape[1] // KB
    last = M // BLOCK * BLOCK  # where a last block of fewer rows starts
    whole = min(i1, last)
    # One block of A's rows against every panel in turn: its tiles stay in L1 while B
    # streams. Measured (2 threads, B=50, T=50), against 128 rows of A per panel: input
    # side 2500x256x1024 260 -> 620 GFLOP/s, dy below 2500x1024x256 290 -> 760.
    for i in range(i0, whole, BLOCK):
        for p in range(p0, p1):
            _block(a_bf, bp, c, i, p, kblocks, BLOCK, scratch)
    if i0 <= last < min(i1, M):
        rows = M - last
        tile_configure(configs[rows])
        for p in range(p0, p1):
            _block(a_bf, bp, c, last, p, kblocks, rows, scratch)
        tile_configure(configs[BLOCK])


@kernel
def _block(a_bf, bp, c, i, p, kblocks, rows, scratch):
    """C[i:i+rows, one panel's columns] += their products, under configs[rows]."""
    cj = p * BLOCK
    cols = min(BLOCK, c.shape[1] - cj)
    target, r0, c0 = c, i, cj
    if cols < BLOCK:
        scratch[:rows] = 0.0
        scratch[:rows, :cols] = c[i:i + rows, cj:cj + cols]
        target, r0, c0 = scratch, 0, 0
    block_rows(a_bf, i, bp, p, target, r0, c0, kblocks, rows)
    if cols < BLOCK:
        c[i:i + rows, cj:cj + cols] = scratch[:rows, :cols]


@kernel
def split_by_rows(Mp, npan, nthreads, with_sums, rounded):
    """Whether gemm_bf16 splits a product of Mp (padded) rows and npan panels across
    threads by blocks of rows (each thread rounds its own rows of A into a_bf[0])
    rather than by panels (each rounds all of A into its own a_bf[t]): when there are
    enough rows, and always with sums (each taken once) or an A already rounded."""
    return rounded or with_sums or Mp >= 2 * BLOCK * nthreads or npan < nthreads


@parallel_kernel
def gemm_bf16(a, trans_a, bp, c, sums, a_bf, rounded, configs, nthreads):
    """c += opA @ B in bfloat16 products and float32 sums. a: (M, K), or (K, M) when
    trans_a; bp: B packed by pack_bf16; c: (M, N) float32. sums: (0,), or (M,) to which
    opA's row sums are added (float32). a_bf: (nthreads, padded(M), padded(K)) uint16
    workspace (one copy when split_by_rows). rounded: a_bf[0] already holds opA
    rounded (engine.product's a_bf16), so round nothing (sums must then be
    empty)."""
    Mp = a_bf.shape[1]
    npan = bp.shape[0]
    by_rows = split_by_rows(Mp, npan, nthreads, sums.shape[0] > 0, rounded)
    for t in prange(nthreads):
        tile_configure(configs[BLOCK])
        scratch = np.empty((BLOCK, BLOCK), np.float32)
        if by_rows:
            r0, r1 = split(Mp, nthreads, t, BLOCK)
            if not rounded:
                to_bf16_rows(a_bf[0], a, trans_a, sums, r0, r1)
            product_blocks(a_bf[0], bp, c, r0, r1, 0, npan, scratch, configs)
        else:
            p0, p1 = split(npan, nthreads, t, 1)
            to_bf16_rows(a_bf[t], a, trans_a, sums, 0, Mp)
            product_blocks(a_bf[t], bp, c, 0, Mp, p0, p1, scratch, configs)
        tile_release()
