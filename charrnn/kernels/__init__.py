"""Numba-compiled kernels: module-level functions on arrays and ints, no I/O, no objects.

Every kernel is compiled with `kernel` below. Randomness is always passed in
(a key or an array of uniforms), never drawn from a global generator.
"""

from numba import njit

# error_model="numpy": division never raises, so Numba emits no zero checks,
# which would otherwise stop loops from vectorising.
# fastmath without "nnan"/"ninf": reductions may be reassociated and multiply-adds
# fused, but NaN and Inf keep their meaning, so divergence is still detected.
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}

kernel = njit(cache=True, error_model="numpy", fastmath=FASTMATH)
