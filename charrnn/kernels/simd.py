"""What Numba cannot express in Python syntax, written as LLVM IR through @intrinsic:
register-blocked multiply-add tiles for the matrix products, and the atomics and
spin barrier that let the threads of one parallel region wait for each other.

Intrinsics are compiled into the kernels that call them, so those kernels still
cache on disk.

The tiles are fitted to the vector instruction set of the process (charrnn.isa,
kernels.ISA): SHAPE below gives their rows, panel width and vector size for it.
"""

import ctypes
from dataclasses import dataclass

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from charrnn.kernels import ISA, kernel


@dataclass(frozen=True)
class TileShape:
    """How the matrix products are blocked for one level of charrnn.isa.

    vector_bytes: the width of the vectors the tiles are written in; 0 for the
        portable level, whose tiles are plain loops that LLVM vectorises for the CPU.
    mr: rows of A per tile. A tile of fewer rows (the last rows of a matrix) is
        made of tiles of powers of two rows below mr (7 = 4 + 2 + 1): few variants
        to compile, and each element of C is still one chain of multiply-adds.
    nr: columns of a packed panel of B, a multiple of the float32 and float64 vectors.
    narrow: narrower tiles, with mr rows, for the last panel of a matrix whose width
        is not a multiple of nr (H = 512 leaves 8 columns of 24): computing only
        those columns saves the padding's multiply-adds, and C takes them directly,
        without the scratch tile. Multiples of the float32 and float64 vectors.
    row_span: panels per tile when A is one row (batch-1 sampling): a one-row tile
        of one panel has too few multiply-add chains to hide the multiply-add's
        latency; spanning more panels gives it more, each element keeping its own."""

    vector_bytes: int
    mr: int
    nr: int
    narrow: tuple
    row_span: int

    def lanes(self, itemsize: int) -> int:
        """Elements per vector for an element size (a nominal 8 floats when portable)."""
        return (self.vector_bytes or 32) // itemsize


SHAPES = {
    # 16 256-bit registers: 4 x 3 accumulators + 3 vectors of B + 1 broadcast of A.
    "avx2": TileShape(vector_bytes=32, mr=4, nr=24, narrow=(8, 16), row_span=3),
    # 32 512-bit registers: see README, "How the engine works".
    "avx512": TileShape(vector_bytes=64, mr=6, nr=64, narrow=(16, 32), row_span=2),
    # Plain loops over a row of a panel at a time; no narrow or wide tiles.
    "portable": TileShape(vector_bytes=0, mr=4, nr=16, narrow=(), row_span=1),
}
SHAPE = SHAPES[ISA.level]
NR = SHAPE.nr
MR = SHAPE.mr
ROW_SPAN = SHAPE.row_span
# The tile widths gemm.py uses: the narrow ones, then a whole panel.
TILE_WIDTHS = SHAPE.narrow + (NR,)


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
    the arrays. Each element of C is one chain of fused multiply-adds in the order
    of k, starting from its value in C, whatever the tile's shape.

    span > 1 (with cols = NR): the tile covers span consecutive panels, span * NR
    columns of C. Bp must then be a whole panel bp[p] of a packed array (npan, K, NR)
    with p + span <= npan: the next panels follow it in memory (see
    TileShape.row_span; the result is bitwise that of span one-panel tiles).

    The portable level has no IR tiles: see portable_tile."""
    assert cols in TILE_WIDTHS and (span == 1 or cols == NR) and SHAPE.vector_bytes

    @intrinsic
    def tile(typingctx, a, a0, bp, c, c0, cj, k0, k1):
        sig = types.void(a, a0, bp, c, c0, cj, k0, k1)

        def codegen(context, builder, signature, args):
            fty = _float_type(signature.args[0].dtype)
            itemsize = context.get_abi_sizeof(fty)
            lanes = SHAPE.vector_bytes // itemsize
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
def fmuladd(typingctx, x, y, z):
    """x * y + z for floats of one type, as LLVM's llvm.fmuladd: fused into one
    rounding where the CPU has a fast fused multiply-add, else a multiply and an add.
    LLVM makes that choice per type and target, never per use, so every tile of
    the portable level rounds alike (and reassociation cannot split the chain)."""
    if not (x == y == z and isinstance(x, types.Float)):
        return None
    sig = x(x, y, z)

    def codegen(context, builder, signature, args):
        fty = _float_type(signature.args[0])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(fty, [fty, fty, fty]),
                                            f"llvm.fmuladd.{'f32' if isinstance(fty, ir.FloatType) else 'f64'}")
        return builder.call(fn, list(args))

    return sig, codegen


@kernel
def portable_tile(rows, cols, trans_a, a, a0, bp, c, c0, cj, k0, k1):
    """The portable level's tile, plain loops: C[c0:c0+rows, cj:cj+cols] +=
    opA[a0:a0+rows, k0:k1] @ Bp[k0:k1, :cols], opA as in make_tile. Each element of
    C is one chain of multiply-adds (fmuladd) in the order of k, as in the IR tiles;
    LLVM vectorises the loop over columns for whatever vectors the CPU has."""
    for r in range(rows):
        i = a0 + r
        crow = c[c0 + r, cj:cj + cols]
        for k in range(k0, k1):
            x = a[k, i] if trans_a else a[i, k]
            brow = bp[k]
            for j in range(cols):
                crow[j] = fmuladd(x, brow[j], crow[j])


@intrinsic
def move_row(typingctx, dst, d0, src, s0):
    """dst's elements d0 .. d0+MR-1 = src's s0 .. s0+MR-1, counted from each array's
    first element along contiguous memory, as one vector load and store (a loop of
    MR scalar copies stays scalar: the arrays may overlap, as far as LLVM knows).
    dst and src: arrays of one float dtype. Portable: MR scalar loads, then MR stores."""
    sig = types.void(dst, d0, src, s0)

    def codegen(context, builder, signature, args):
        fty = _float_type(signature.args[0].dtype)
        itemsize = context.get_abi_sizeof(fty)
        dst_, src_ = (_element_pointer(context, builder, signature.args[arr], args[arr],
                                       context.cast(builder, args[at], signature.args[at], types.int64))
                      for arr, at in ((0, 1), (2, 3)))
        if SHAPE.vector_bytes:
            vty = ir.VectorType(fty, MR).as_pointer()
            builder.store(builder.load(builder.bitcast(src_, vty), align=itemsize), builder.bitcast(dst_, vty),
                          align=itemsize)
        else:
            i64 = ir.IntType(64)
            values = [builder.load(builder.gep(src_, [i64(r)])) for r in range(MR)]
            for r, value in enumerate(values):
                builder.store(value, builder.gep(dst_, [i64(r)]))
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
#
# The threads of a parallel region meet at barrier(): every write a thread made
# before it must be visible to every thread after it, also on CPUs that reorder
# memory accesses (ARM, POWER), where x86's implicit ordering cannot be relied on.
# The orderings below are the C++ memory model's, which LLVM maps to each CPU's
# instructions (plain moves on x86, ldar/stlr or barriers on ARM).

def _element_pointer(context, builder, array_type, array, index):
    arr = context.make_array(array_type)(context, builder, array)
    return builder.gep(arr.data, [index])


def _make_fetch_add(ordering: str):
    @intrinsic
    def fetch_add(typingctx, arr, index, value):
        sig = types.int64(arr, index, value)

        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            value = context.cast(builder, args[2], signature.args[2], types.int64)
            return builder.atomic_rmw("add", ptr, value, ordering)

        return sig, codegen

    fetch_add.__doc__ = f"""arr[index] += value atomically, {ordering}; returns the old value. arr: 1-D int64."""
    return fetch_add


fetch_add_acq_rel = _make_fetch_add("acq_rel")
fetch_add_release = _make_fetch_add("release")
fetch_add_relaxed = _make_fetch_add("monotonic")


@intrinsic
def load_acquire(typingctx, arr, index):
    """arr[index] read with acquire ordering.  arr: 1-D int64."""
    sig = types.int64(arr, index)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


def spin_hint_call(builder, triple: str) -> None:
    """Emit the CPU's spin-wait hint, if it has one we know: x86's pause (the core
    leaves its resources to the other hardware thread and saves power), AArch64's
    yield. Elsewhere nothing: the spinning load is all there is, and barrier()
    yields its time slice after a while anyway."""
    arch = triple.split("-")[0]
    if arch in ("x86_64", "i386", "i486", "i586", "i686"):
        name, fnty, args = "llvm.x86.sse2.pause", ir.FunctionType(ir.VoidType(), []), []
    elif arch in ("aarch64", "arm64", "aarch64_be"):
        i32 = ir.IntType(32)
        name, fnty, args = "llvm.aarch64.hint", ir.FunctionType(ir.VoidType(), [i32]), [i32(1)]  # 1: yield
    else:
        return
    builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


_TRIPLE = llvm.get_process_triple()


@intrinsic
def cpu_pause(typingctx):
    """The spin-wait hint of this process's CPU (see spin_hint_call)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        spin_hint_call(builder, _TRIPLE)
        return context.get_dummy_value()

    return sig, codegen


def _yield_function():
    """The C library's sched_yield (SwitchToThread on Windows), as an address."""
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value
    except (AttributeError, OSError, TypeError):
        return ctypes.cast(ctypes.windll.kernel32.SwitchToThread, ctypes.c_void_p).value


# Bound by symbol name so that callers stay cacheable.
llvm.add_symbol("charrnn_sched_yield", _yield_function())
_sched_yield = types.ExternalFunction("charrnn_sched_yield", types.int32())

BARRIER_SIZE = 32  # int64 words: the count and the generation on separate cache lines
_SPINS_BEFORE_YIELD = 20000


@njit(inline="always")
def barrier(state, nthreads):
    """Wait until all nthreads threads of a parallel region have arrived.

    state: int64 array of BARRIER_SIZE zeros shared by the threads. The last thread
    to arrive resets the count and bumps the generation the others spin on. A waiter
    yields its time slice after a while, so a busy machine slows it but cannot stall it.

    Why these orderings suffice (C++ memory model): each arrival is a release
    (acq_rel) increment of the count, so a thread's writes before the barrier come
    before its increment; the increments form one release sequence on the count,
    which the last arrival's increment reads with acquire: it sees every thread's
    writes. It then bumps the generation with release, and each waiter's acquire
    load that sees the new generation synchronizes with that bump, so by
    transitivity every waiter sees every thread's writes, and none of its own
    later writes can be seen by a read another thread made before arriving. The
    count's reset needs no ordering of its own: it precedes the bump in the last
    thread, so a thread that has left the barrier sees it before it can arrive at
    the next one. The generation is read on entry before this thread's arrival,
    whose release keeps the read before it, so the read cannot see this barrier's
    own bump, which follows every arrival."""
    if nthreads == 1:
        return
    generation = load_acquire(state, 16)
    if fetch_add_acq_rel(state, 0, 1) == nthreads - 1:
        fetch_add_relaxed(state, 0, -nthreads)
        fetch_add_release(state, 16, 1)
    else:
        spins = 0
        while load_acquire(state, 16) == generation:
            cpu_pause()
            spins += 1
            if spins > _SPINS_BEFORE_YIELD:
                _sched_yield()
