"""Matrix products through the BLAS that SciPy ships, callable from compiled code.

The Fortran `sgemm`/`dgemm` of `scipy.linalg.cython_blas` are registered with LLVM
under fixed symbol names and declared as external functions. Unlike a ctypes
pointer, a symbol is resolved when the code is loaded, so kernels that call it
can be cached on disk (`cache=True`).
"""

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.extending import get_cython_function_address

from charrnn.kernels import kernel

for _name in ("sgemm", "dgemm"):
    llvm.add_symbol("charrnn_" + _name, get_cython_function_address("scipy.linalg.cython_blas", _name))

_ptr = types.voidptr
_GEMM_SIGNATURE = types.void(*([_ptr] * 13))
_sgemm = types.ExternalFunction("charrnn_sgemm", _GEMM_SIGNATURE)
_dgemm = types.ExternalFunction("charrnn_dgemm", _GEMM_SIGNATURE)


@kernel
def _leading_dim(a, ncols):
    """Row stride of a row-major matrix in elements; BLAS wants it >= max(1, ncols)."""
    if a.shape[1] > 1 and a.strides[1] != a.itemsize:
        raise ValueError("gemm: the last axis of every matrix must be contiguous")
    if a.shape[0] <= 1:
        return max(1, ncols)
    return a.strides[0] // a.itemsize


@kernel
def gemm(trans_a, trans_b, alpha, a, b, beta, c):
    """c = alpha * op(a) @ op(b) + beta * c for row-major 2-D arrays.

    c: (M, N); op(a): (M, K); op(b): (K, N); op(x) is x.T when trans_x is True.
    Views with a row stride (slices of rows of a bigger array) are fine; the last
    axis must be contiguous. float32 and float64 (all three of one dtype).
    """
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        if beta == 0.0:
            c[:] = 0.0
        else:
            c *= beta
        return
    # A row-major matrix is its column-major transpose, so row-major
    # c = op(a) op(b) is column-major c^T = op(b)^T op(a)^T.
    ints = np.empty(6, np.int32)
    ints[0] = n
    ints[1] = m
    ints[2] = k
    ints[3] = _leading_dim(b, b.shape[1])
    ints[4] = _leading_dim(a, a.shape[1])
    ints[5] = _leading_dim(c, n)
    flags = np.empty(2, np.uint8)
    flags[0] = 84 if trans_b else 78  # 'T' or 'N'
    flags[1] = 84 if trans_a else 78
    scalars = np.empty(2, c.dtype)
    scalars[0] = alpha
    scalars[1] = beta
    args = (flags[0:].ctypes, flags[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes,
            scalars[0:].ctypes, b.ctypes, ints[3:].ctypes, a.ctypes, ints[4:].ctypes,
            scalars[1:].ctypes, c.ctypes, ints[5:].ctypes)
    if c.itemsize == 4:
        _sgemm(*args)
    else:
        _dgemm(*args)
