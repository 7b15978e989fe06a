"""What Numba cannot express in Python syntax, written as LLVM IR through @intrinsic:
register-blocked multiply-add tiles for the matrix products, and the atomics and
spin barrier that let the threads of one parallel region wait for each other.

Intrinsics are compiled into the kernels that call them, so those kernels still
cache on disk.
"""

import ctypes

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

NR = 24  # columns of a packed panel of B: three 8-float (or six 4-double) vectors
MR = 4  # rows of A per tile: 4 x 3 accumulators + 3 B vectors + 1 broadcast = 16 registers
# Tiles also come 8 and 16 columns wide, for the last panel of a matrix whose width is
# not a multiple of NR (H = 512 leaves 8 columns): computing only those columns saves
# the padding's multiply-adds, and C takes them directly, without the scratch tile
# (gemm.py builds these with MR rows only).
TILE_WIDTHS = (8, 16, NR)

_VECTOR_BYTES = 32  # AVX2


def _float_type(dtype):
    if dtype == types.float32:
        return ir.FloatType()
    if dtype == types.float64:
        return ir.DoubleType()
    raise TypeError(f"tile kernels support float32 and float64, not {dtype}")


def make_tile(rows: int, trans_a: bool, cols: int = NR, span: int = 1):
    """A kernel C[c0:c0+rows, cj:cj+cols] += opA[a0:a0+rows, k0:k1] @ Bp[k0:k1, :cols].

    opA[i, k] is A[i, k], or A[k, i] when trans_a. A, Bp and C are 2-D arrays of
    one float dtype whose last axis is contiguous; Bp is a packed panel (K, NR).
    cols is one of TILE_WIDTHS. No bounds checks: the caller keeps the tile inside
    the arrays.

    span > 1 (with cols = NR): the tile covers span consecutive panels, span * NR
    columns of C. Bp must then be a whole panel bp[p] of a packed array (npan, K, NR)
    with p + span <= npan: the next panels follow it in memory. A one-row tile has
    only three multiply-add chains, too few to hide the multiply-add's latency; more
    panels give it more chains, while each element of C keeps its own chain, in the
    same order (the result is bitwise that of span one-panel tiles)."""
    assert cols in TILE_WIDTHS and (span == 1 or cols == NR)

    @intrinsic
    def tile(typingctx, a, a0, bp, c, c0, cj, k0, k1):
        sig = types.void(a, a0, bp, c, c0, cj, k0, k1)

        def codegen(context, builder, signature, args):
            fty = _float_type(signature.args[0].dtype)
            itemsize = context.get_abi_sizeof(fty)
            lanes = _VECTOR_BYTES // itemsize
            nvec = cols // lanes
            vty = ir.VectorType(fty, lanes)
            i64 = ir.IntType(64)
            arrays = [context.make_array(t)(context, builder, v)
                      for t, v in ((signature.args[0], args[0]), (signature.args[2], args[2]),
                                   (signature.args[3], args[3]))]
            pa, pb, pc = (arr.data for arr in arrays)
            lda, ldb, ldc = (builder.sdiv(cgutils.unpack_tuple(builder, arr.strides, 2)[0], i64(itemsize))
                             for arr in arrays)
            a0_, c0_, cj_, k0_, k1_ = (context.cast(builder, args[i], signature.args[i], types.int64)
                                      for i in (1, 4, 5, 6, 7))
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                                                 f"llvm.fma.v{lanes}{'f32' if itemsize == 4 else 'f64'}")

            def vector_at(base, offset):
                ptr = builder.gep(base, [offset], inbounds=True)
                return builder.bitcast(ptr, vty.as_pointer())

            # Accumulators start from C; allocas become registers after mem2reg.
            accumulators = []
            width = nvec * span  # vectors per row of the tile
            panel_size = builder.mul(cgutils.unpack_tuple(builder, arrays[1].shape, 2)[0], ldb)
            # Where vector v of a row of B starts, from the start of that row in the first panel.
            b_offsets = [builder.add(builder.mul(panel_size, i64(v // nvec)), i64(lanes * (v % nvec)))
                         for v in range(width)]
            for r in range(rows):
                row = builder.mul(builder.add(c0_, i64(r)), ldc)
                for v in range(width):
                    ptr = vector_at(pc, builder.add(row, builder.add(cj_, i64(lanes * v))))
                    slot = cgutils.alloca_once(builder, vty)
                    builder.store(builder.load(ptr, align=itemsize), slot)
                    accumulators.append((slot, ptr))
            zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            with cgutils.for_range(builder, builder.sub(k1_, k0_)) as loop:
                k = builder.add(loop.index, k0_)
                brow = builder.mul(k, ldb)
                bvecs = [builder.load(vector_at(pb, builder.add(brow, offset)), align=itemsize)
                         for offset in b_offsets]
                for r in range(rows):
                    i = builder.add(a0_, i64(r))
                    offset = builder.add(builder.mul(k, lda), i) if trans_a else builder.add(builder.mul(i, lda), k)
                    scalar = builder.load(builder.gep(pa, [offset], inbounds=True), align=itemsize)
                    broadcast = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(vty, None), scalar, i64(0)),
                        ir.Constant(vty, None), zero_mask)
                    for v in range(width):
                        slot, _ = accumulators[r * width + v]
                        builder.store(builder.call(fma, [broadcast, bvecs[v], builder.load(slot)]), slot)
            for slot, ptr in accumulators:
                builder.store(builder.load(slot), ptr, align=itemsize)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = f"tile_{'t' if trans_a else 'n'}{rows}x{cols * span}"
    return tile


@intrinsic
def move_row(typingctx, dst, d0, src, s0):
    """dst's elements d0 .. d0+MR-1 = src's s0 .. s0+MR-1, counted from each array's
    first element along contiguous memory, as one vector load and store (a loop of
    MR scalar copies stays scalar: the arrays may overlap, as far as LLVM knows).
    dst and src: arrays of one float dtype."""
    sig = types.void(dst, d0, src, s0)

    def codegen(context, builder, signature, args):
        vty = ir.VectorType(_float_type(signature.args[0].dtype), MR)
        itemsize = context.get_abi_sizeof(vty.element)
        dst_, src_ = (builder.bitcast(_element_pointer(context, builder, signature.args[arr], args[arr],
                                                       context.cast(builder, args[at], signature.args[at], types.int64)),
                                      vty.as_pointer())
                      for arr, at in ((0, 1), (2, 3)))
        builder.store(builder.load(src_, align=itemsize), dst_, align=itemsize)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch(typingctx, arr, i, j):
    """Ask the CPU to bring the cache line holding arr[i, j] (a 2-D array) into its
    caches, without waiting for it. No bounds check: (i, j) must be inside arr."""
    sig = types.void(arr, i, j)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        row_stride, col_stride = cgutils.unpack_tuple(builder, array.strides, 2)
        i_, j_ = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 2))
        offset = builder.add(builder.mul(i_, row_stride), builder.mul(j_, col_stride))
        i8p = ir.IntType(8).as_pointer()
        address = builder.gep(builder.bitcast(array.data, i8p), [offset], inbounds=True)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(fn, [address, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return sig, codegen


# ----- atomics and the spin barrier ----------------------------------------------------

def _element_pointer(context, builder, array_type, array, index):
    arr = context.make_array(array_type)(context, builder, array)
    return builder.gep(arr.data, [index])


@intrinsic
def atomic_add(typingctx, arr, index, value):
    """arr[index] += value atomically (sequentially consistent); returns the old value.
    arr: 1-D int64."""
    sig = types.int64(arr, index, value)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, value, "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, index):
    """arr[index] read with acquire ordering.  arr: 1-D int64."""
    sig = types.int64(arr, index)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def cpu_pause(typingctx):
    """The x86 spin-wait hint: a waiting thread leaves the core's resources to the other."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                            "llvm.x86.sse2.pause")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


# sched_yield from the C library, bound by symbol name so that callers stay cacheable.
llvm.add_symbol("charrnn_sched_yield", ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value)
_sched_yield = types.ExternalFunction("charrnn_sched_yield", types.int32())

BARRIER_SIZE = 32  # int64 words: the count and the generation on separate cache lines
_SPINS_BEFORE_YIELD = 20000


@njit(inline="always")
def barrier(state, nthreads):
    """Wait until all nthreads threads of a parallel region have arrived.

    state: int64 array of BARRIER_SIZE zeros shared by the threads. The last thread
    to arrive resets the count and bumps the generation the others spin on. A waiter
    yields its time slice after a while, so a busy machine slows it but cannot stall it."""
    if nthreads == 1:
        return
    generation = atomic_load(state, 16)
    if atomic_add(state, 0, 1) == nthreads - 1:
        atomic_add(state, 0, -nthreads)
        atomic_add(state, 16, 1)
    else:
        spins = 0
        while atomic_load(state, 16) == generation:
            cpu_pause()
            spins += 1
            if spins > _SPINS_BEFORE_YIELD:
                _sched_yield()
