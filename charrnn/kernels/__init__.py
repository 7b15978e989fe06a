"""Numba-compiled kernels: module-level functions on arrays and ints, no I/O, no objects.

Every kernel is compiled with `kernel` below. Randomness is always passed in
(a key or an array of uniforms), never drawn from a global generator.
"""

import numba
from numba import njit

# The parallel kernels meet at barriers inside one region, so every iteration of
# their prange(nthreads) must run on a thread of its own. The omp and workqueue
# layers give each thread one iteration; TBB's work stealing need not, so TBB comes
# last (workqueue is always available, so it is never reached).
numba.config.THREADING_LAYER = "default"
numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]

# error_model="numpy": division never raises, so Numba emits no zero checks,
# which would otherwise stop loops from vectorising.
# fastmath without "nnan"/"ninf": reductions may be reassociated and multiply-adds
# fused, but NaN and Inf keep their meaning, so divergence is still detected.
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}

kernel = njit(cache=True, error_model="numpy", fastmath=FASTMATH)

# For kernels with a `prange(nthreads)` loop: each of the nthreads iterations runs
# on its own thread (see engine.py for the threading layer), so the iterations of
# one region can wait for each other at a barrier.
parallel_kernel = njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True)
