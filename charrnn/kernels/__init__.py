"""Numba-compiled kernels: module-level functions on arrays and ints, no I/O, no objects.

Every kernel is compiled with `kernel` below. Randomness is always passed in
(a key or an array of uniforms), never drawn from a global generator.
"""

import hashlib
import os
from pathlib import Path

import numba
from numba import njit

from charrnn import isa

# The vector instruction set everything below is compiled for (see charrnn.isa):
# chosen once, before Numba compiles anything, and refused with a CharrnnError
# if CHARRNN_ISA names a level this CPU lacks.
ISA = isa.active()
isa.configure_numba(ISA)


def cache_key() -> str:
    """What the compiled kernels depend on besides Numba's own key: a hash of every
    kernel source file and of the CPU features charrnn sets (isa._full_width), the
    ISA level (which shapes the tiles) and the bfloat16 unit (which kernels/amx.py
    builds its products for)."""
    digest = hashlib.sha256((ISA.cpu_features or "").encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{digest.hexdigest()[:16]}-{ISA.level}" + (f"-{ISA.bf16}" if ISA.bf16 else "")


def _cache_dir() -> str:
    """Where compiled kernels are cached: under NUMBA_CACHE_DIR if set, else
    ~/.cache/charrnn/numba, in a folder named by a hash of every kernel source file
    and by the ISA level.

    Numba keys a cached function on its own source file only, so a kernel would go on
    running the old version of a helper it inlines from another file (an activation,
    a tile) after that file changed, in a checkout or after an upgrade. A folder per
    version of the sources makes any change recompile everything. The level is in
    the name too: Numba's key has the CPU's features, but not the tile shapes our
    sources choose from them."""
    base = numba.config.CACHE_DIR or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "charrnn", "numba")
    return os.path.join(base, cache_key())


numba.config.CACHE_DIR = _cache_dir()

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

# nogil: a kernel lets go of Python's lock while it runs, so that other Python threads
# go on meanwhile (the server's event loop answers HTTP while its engine thread
# generates); the kernels touch no Python objects.
kernel = njit(cache=True, error_model="numpy", fastmath=FASTMATH, nogil=True)

# For kernels with a `prange(nthreads)` loop: each of the nthreads iterations runs
# on its own thread (the threading layer set above sees to it), so the iterations of
# one region can wait for each other at a barrier.
parallel_kernel = njit(cache=True, error_model="numpy", fastmath=FASTMATH, parallel=True, nogil=True)

# For elementwise updates whose every element must come out the same however the
# loop is vectorised or split: without "contract", a multiply-add is rounded twice
# whether it runs in a vector or in the scalar remainder of a thread's part (LLVM
# may fuse the two differently), so results cannot depend on the thread count; and
# without "arcp" a division is a division.
exact_kernel = njit(cache=True, error_model="numpy", fastmath={"nsz"}, nogil=True)
