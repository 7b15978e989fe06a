"""The packed matrix products against NumPy: every transpose, partial panels and
tiles of every width, strided views, row sums taken while packing, and 1 or 2
threads giving bitwise the same result."""

import numpy as np
import pytest

from charrnn.kernels import ISA
from charrnn.kernels.gemm import NARROW, VECTOR_TILES, gemm, pack, panels, split, tile_cols
from charrnn.kernels.simd import MR, NR

# The tile shapes depend on the ISA level (simd.SHAPES); the shapes below are derived
# from them so that every level meets each case.
SHAPES = [(3, 5, 7), (1, 17, 40), (13, 30, 65), (9, 300, 24), (6, 0, 3), (50, 64, 100),
          (5, 1100, 30),  # K > KC: several blocks of k
          (150, 20, 30),  # M > MC per thread: several blocks of rows, the last a partial tile
          (300, 20, 30),  # M > MC_T per thread: so too for a transposed A
          (2 * MR + 3, 33, NR + NARROW[0]),  # a last panel exactly as wide as a narrow tile: into C
          (MR + 1, 9, NR + NARROW[1] - 3),  # a last panel narrower than a narrow tile: through scratch
          (1, 600, 7 * NR + 5)]  # one row: wide tiles over 7 whole panels, then a partial one


def packed(w, transpose, nthreads):
    k, n = w.shape[::-1] if transpose else w.shape
    bp = np.empty((panels(n), k, NR), w.dtype)
    pack(bp, w, transpose, nthreads)
    return bp


def no_sums(a):
    return np.empty(0, a.dtype)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_product_matches_numpy(rng, dtype, tol, trans_a, trans_b, shape):
    M, K, N = shape
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    w = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    c = rng.standard_normal((M, N)).astype(dtype)
    expected = c.astype(np.float64) + (a.T if trans_a else a).astype(np.float64) @ (w.T if trans_b else w)
    results = []
    for nthreads in (1, 2):
        out = c.copy()
        gemm(a, trans_a, packed(w, trans_b, nthreads), out, no_sums(a), nthreads)
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * max(1, K))
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("n", [2 * NR, 3 * NR, 7 * NR, 8 * NR + 8, 10 * NR + 13])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_a_row_alone_is_bitwise_that_row_of_the_batch(rng, n, nthreads):
    # A row alone takes wide tiles over ROW_SPAN whole panels and the last partial
    # panel in scratch; in the batch a 4-row group takes them in 4-row tiles and a
    # narrow tile. Each element's sum must run in the same order either way, so that
    # a stream sampled alone equals the same stream sampled among others.
    a = rng.standard_normal((6, 700)).astype(np.float32)  # K > KC: the batch sums in k blocks
    bp = packed(rng.standard_normal((700, n)).astype(np.float32), False, nthreads)
    c = rng.standard_normal((6, n)).astype(np.float32)
    batch = c.copy()
    gemm(a, False, bp, batch, no_sums(a), nthreads)
    for i in range(6):
        row = c[i:i + 1].copy()
        gemm(a[i:i + 1], False, bp, row, no_sums(a), nthreads)
        np.testing.assert_array_equal(row[0], batch[i])


def test_views_with_row_strides(rng):
    a = rng.standard_normal((5, 40))[:, 3:23]  # rows of a wider array
    w = rng.standard_normal((20, 30))
    big = np.zeros((5, 50))
    gemm(a, False, packed(w, False, 2), big[:, 10:40], no_sums(a), 2)
    np.testing.assert_allclose(big[:, 10:40], a @ w, rtol=1e-13)
    assert not big[:, :10].any() and not big[:, 40:].any()


@pytest.mark.parametrize("shape", [(150, 1100, 30), (7, 33, 32), (5, 9, 37)])  # row and k blocks, a partial strip
def test_row_sums_of_transposed_a_are_added_in_the_order_of_a_column_sum(rng, shape):
    from charrnn.kernels.linear import add_column_sums

    M, K, N = shape
    a = rng.standard_normal((K, M)).astype(np.float32)
    w = rng.standard_normal((K, N)).astype(np.float32)
    start = rng.standard_normal(M).astype(np.float32)
    expected = start.copy()
    add_column_sums(expected, a, 1)
    plain = np.zeros((M, N), np.float32)
    gemm(a, True, packed(w, False, 1), plain, no_sums(a), 1)
    for nthreads in (1, 2):
        sums, out = start.copy(), np.zeros((M, N), np.float32)
        gemm(a, True, packed(w, False, nthreads), out, sums, nthreads)
        np.testing.assert_array_equal(sums, expected)
        np.testing.assert_array_equal(out, plain)


def test_row_sums_need_a_transposed_a_and_one_entry_per_row(rng):
    from charrnn.engine import packed as engine_packed, product

    a, w = rng.standard_normal((4, 6)), rng.standard_normal((6, 3))
    with pytest.raises(ValueError, match="transposed"):
        product(np.zeros((4, 3)), a, False, engine_packed(w, False, 1), 1, row_sums=np.zeros(4))
    with pytest.raises(ValueError, match="shape"):  # the kernel would write past its end
        product(np.zeros((6, 3)), a, True, engine_packed(rng.standard_normal((4, 3)), False, 1), 1,
                row_sums=np.zeros(4))


def test_packing_pads_with_zeros(rng):
    w = rng.standard_normal((3, NR + 6))
    bp = packed(w, False, 1)
    assert bp.shape == (2, 3, NR)
    np.testing.assert_array_equal(bp[1, :, :6], w[:, NR:])
    assert not bp[1, :, 6:].any()


@pytest.mark.parametrize("nthreads", [1, 2])
def test_every_row_count_and_width_of_a_last_tile(rng, nthreads):
    """Fewer than MR rows are tiles of 4, 2 and 1 rows; a last panel a narrow tile
    or scratch: every remainder of rows and of columns, against float64 NumPy."""
    for M in range(1, 2 * MR + 2):
        for N in (NR - 1, NR + 1, NR + NARROW[0], NR + NARROW[1] - 1, 2 * NR):
            a = rng.standard_normal((M, 40)).astype(np.float32)
            w = rng.standard_normal((40, N)).astype(np.float32)
            out = np.zeros((M, N), np.float32)
            gemm(a, False, packed(w, False, nthreads), out, no_sums(a), nthreads)
            np.testing.assert_allclose(out, a.astype(np.float64) @ w, rtol=1e-5, atol=1e-4, err_msg=f"{M}x{N}")
            out_t = np.zeros((M, N), np.float32)
            gemm(np.ascontiguousarray(a.T), True, packed(w, False, nthreads), out_t, no_sums(a), nthreads)
            np.testing.assert_array_equal(out_t, out)


@pytest.mark.parametrize("n,parts,align", [(10, 3, 1), (256, 2, 8), (5, 2, 8), (0, 2, 4), (65, 4, 4)])
def test_split_covers_the_range_once_at_aligned_boundaries(n, parts, align):
    ranges = [split(n, parts, p, align) for p in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start % align == 0 or start == n for start, _ in ranges)


@pytest.mark.skipif(not VECTOR_TILES, reason="portable tiles are loops of any width")
@pytest.mark.parametrize("rows,width,cols", [
    (MR, 1, NARROW[0]), (MR, NARROW[0], NARROW[0]), (MR, NARROW[0] + 1, NARROW[1]), (MR, NARROW[1], NARROW[1]),
    (MR, NARROW[1] + 1, NR), (MR, NR, NR), (MR - 1, 8, NR), (1, NARROW[0], NR)])
def test_last_panel_uses_the_narrowest_tile_that_holds_it(rows, width, cols):
    assert tile_cols(rows, width) == cols


@pytest.mark.skipif(VECTOR_TILES, reason="the vector levels' tiles have fixed widths")
def test_portable_tiles_take_a_last_panel_at_its_own_width():
    assert [tile_cols(rows, width) for rows, width in ((MR, 1), (MR, NR - 1), (1, 5))] == [1, NR - 1, 5]


def test_tiles_fit_the_level():
    """Panels are whole vectors of float32 and float64, narrow tiles too."""
    from charrnn.kernels.simd import SHAPE, SHAPES

    assert SHAPE is SHAPES[ISA.level]
    for shape in SHAPES.values():
        for width in shape.narrow + (shape.nr,):
            assert width % shape.lanes(4) == 0 and width % shape.lanes(8) == 0


@pytest.mark.parametrize("itemsize", [4, 8])
def test_packed_strips_of_a_transposed_a_spread_over_cache_sets(itemsize):
    """Packing a row of A.T writes one group into every strip of a block: strips a
    multiple of 4 KB apart would all land in one L1 set (64 sets of 64-byte lines)
    and evict each other (gemm.A_PAD). At every level at most 4 share a set."""
    from charrnn.kernels.gemm import A_PAD, KC, MC_T, MC_T_ROWS, gemm_workspaces
    from charrnn.kernels.simd import SHAPES

    for shape in SHAPES.values():
        stride = (KC + A_PAD) * shape.mr * itemsize
        strips = MC_T_ROWS // shape.mr  # a block's strips at that level
        sets = [(s * stride // 64) % 64 for s in range(strips)]
        assert max(sets.count(x) for x in sets) <= 4, shape
    a_pack = gemm_workspaces(np.zeros(1, np.float32 if itemsize == 4 else np.float64))[1]
    assert a_pack.shape == (MC_T // MR, KC + A_PAD, MR)
