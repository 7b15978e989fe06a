"""bfloat16 products on AVX512-BF16's vdpbf16ps, for training with precision bf16 on
CPUs that have it but not AMX (AMD Zen 4 and Zen 5; Intel Cooper Lake).

One vdpbf16ps adds, into each of 16 float32 lanes, the products of a pair of
bfloat16 values of A and the pair of B beside it in the same lane: twice the
multiply-adds of a float32 FMA per instruction. It reads exactly the layouts amx.py
multiplies (A's rows rounded to bfloat16 with each pair of k side by side; B's panels
of pairs), so every rounding and packing kernel there serves both; only the block
product differs. Measured on a 2-core AMD EPYC (Zen 5): see the README's bfloat16
section.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from charrnn.kernels import kernel

_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_P8 = _I8.as_pointer()
_FLOATS = ir.VectorType(ir.FloatType(), 16)
_WORDS = ir.VectorType(_I32, 16)
GROUP = 8  # rows of C a whole group holds: 8 x 2 vectors of 16, 16 of the 32 registers


class BFloat(ir.Type):
    """LLVM's bfloat type, which llvmlite's IR builder does not name."""

    def __str__(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, BFloat)

    def __hash__(self):
        return hash("bfloat")


def array_bytes(context, builder, array_type, value):
    """An array's data as a byte pointer, and the array's structure (for its strides)."""
    arr = context.make_array(array_type)(context, builder, value)
    return builder.bitcast(arr.data, _P8), arr


def block_operands(context, builder, signature, args):
    """The operands of a block product intrinsic (a, a0, bp, p, c, c0, cj, kblocks),
    whichever unit's: pa, pb, pc (byte pointers to A, the panels and C), a0, p, c0,
    cj, kblocks (int64), and the byte strides lda, ldc, panel_stride, ldb."""
    pa, arr_a = array_bytes(context, builder, signature.args[0], args[0])
    pb, arr_b = array_bytes(context, builder, signature.args[2], args[2])
    pc, arr_c = array_bytes(context, builder, signature.args[4], args[4])
    indices = [context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 3, 5, 6, 7)]
    lda = cgutils.unpack_tuple(builder, arr_a.strides, 2)[0]
    ldc = cgutils.unpack_tuple(builder, arr_c.strides, 2)[0]
    panel_stride, ldb = cgutils.unpack_tuple(builder, arr_b.strides, 3)[:2]
    return (pa, pb, pc, *indices, lda, ldc, panel_stride, ldb)


_PAIRS = ir.VectorType(BFloat(), 32)  # 16 pairs of bfloat16, as the intrinsic takes them


def _dot(builder, acc, a, b):
    """acc + the pairwise products of a and b (<16 x i32> each, a pair per lane)."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_FLOATS, [_FLOATS, _PAIRS, _PAIRS]),
                                        "llvm.x86.avx512bf16.dpbf16ps.512")
    return builder.call(fn, [acc, builder.bitcast(a, _PAIRS), builder.bitcast(b, _PAIRS)])


def _rows_product(rows):
    """An intrinsic for C[c0:c0+rows, cj:cj+32] += A[a0:a0+rows, :32*kblocks] @ (panel
    p of bp)[:32*kblocks], layouts as amx.py gives them (A (Mp, Kp) and bp (npan,
    Kp/2, 64) uint16, C float32), rows <= GROUP. Per pair of k: two vectors of B
    (its 32 columns), each row's pair of A broadcast to every lane, 2 * rows
    vdpbf16ps into accumulators that stay in registers. No bounds checks."""

    @intrinsic
    def product(typingctx, a, a0, bp, p, c, c0, cj, kblocks):
        sig = types.void(a, a0, bp, p, c, c0, cj, kblocks)

        def codegen(context, builder, signature, args):
            pa, pb, pc, a0_, p_, c0_, cj_, kb_, lda, ldc, panel_stride, ldb = block_operands(
                context, builder, signature, args)
            c_base = builder.add(builder.mul(c0_, ldc), builder.mul(cj_, _I64(4)))
            c_ptrs = [[builder.bitcast(builder.gep(pc, [builder.add(c_base, builder.add(
                builder.mul(ldc, _I64(r)), _I64(64 * h)))]), _FLOATS.as_pointer()) for h in (0, 1)]
                for r in range(rows)]
            a_ptrs = [builder.gep(pa, [builder.mul(builder.add(a0_, _I64(r)), lda)]) for r in range(rows)]
            b_base = builder.gep(pb, [builder.mul(p_, panel_stride)])
            pairs = builder.mul(kb_, _I64(16))  # 32 values of k a block, 16 pairs

            entry = builder.basic_block
            loop = builder.append_basic_block("pairs")
            done = builder.append_basic_block("pairs.done")
            acc0 = [[builder.load(c_ptrs[r][h], align=4) for h in (0, 1)] for r in range(rows)]
            builder.cbranch(builder.icmp_signed(">", pairs, _I64(0)), loop, done)

            builder.position_at_end(loop)
            kp = builder.phi(_I64)
            kp.add_incoming(_I64(0), entry)
            acc = [[builder.phi(_FLOATS) for _ in (0, 1)] for _ in range(rows)]
            for r in range(rows):
                for h in (0, 1):
                    acc[r][h].add_incoming(acc0[r][h], entry)
            b_row = builder.gep(b_base, [builder.mul(kp, ldb)])
            b = [builder.load(builder.bitcast(builder.gep(b_row, [_I64(64 * h)]), _WORDS.as_pointer()), align=4)
                 for h in (0, 1)]
            new = []
            for r in range(rows):
                word = builder.load(builder.bitcast(builder.gep(a_ptrs[r], [builder.mul(kp, _I64(4))]),
                                                    _I32.as_pointer()), align=2)
                splat = builder.shuffle_vector(builder.insert_element(ir.Constant(_WORDS, ir.Undefined), word, _I32(0)),
                                               ir.Constant(_WORDS, ir.Undefined), ir.Constant(_WORDS, [0] * 16))
                new.append([_dot(builder, acc[r][h], splat, b[h]) for h in (0, 1)])
            next_kp = builder.add(kp, _I64(1))
            for r in range(rows):
                for h in (0, 1):
                    acc[r][h].add_incoming(new[r][h], loop)
            kp.add_incoming(next_kp, loop)
            builder.cbranch(builder.icmp_signed("<", next_kp, pairs), loop, done)

            builder.position_at_end(done)
            final = [[builder.phi(_FLOATS) for _ in (0, 1)] for _ in range(rows)]  # phis first in a block
            for r in range(rows):
                for h in (0, 1):
                    final[r][h].add_incoming(acc0[r][h], entry)
                    final[r][h].add_incoming(new[r][h], loop)
                    builder.store(final[r][h], c_ptrs[r][h], align=4)
            return context.get_dummy_value()

        return sig, codegen

    return product


_rows8, _rows4, _rows2, _rows1 = (_rows_product(n) for n in (8, 4, 2, 1))


@kernel
def rows_product(a_bf, a0, bp, p, c, c0, cj, kblocks, rows):
    """C[c0:c0+rows, cj:cj+32] += A[a0:a0+rows] @ panel p, any number of rows: groups
    of 8, then what is left as 4, 2 and 1 (a last block of 18 rows: 8 + 8 + 2)."""
    r = 0
    while r + GROUP <= rows:
        _rows8(a_bf, a0 + r, bp, p, c, c0 + r, cj, kblocks)
        r += GROUP
    if rows - r >= 4:
        _rows4(a_bf, a0 + r, bp, p, c, c0 + r, cj, kblocks)
        r += 4
    if rows - r >= 2:
        _rows2(a_bf, a0 + r, bp, p, c, c0 + r, cj, kblocks)
        r += 2
    if rows - r >= 1:
        _rows1(a_bf, a0 + r, bp, p, c, c0 + r, cj, kblocks)
