"""How much of N cores this machine gives, second by second: python -m benchmarks.probes.cores.

    python -m benchmarks.probes.cores --seconds 30 --window 2

Runs one compiled loop of independent arithmetic per thread (each thread on its
own array, no shared data, no barrier inside a region, regions of about 3 ms) and
prints, for each window, how many regions a second it finished with all threads
against the same loop on one thread. On a machine of its own the ratio stays near
the thread count. On a shared VM it need not: if the ratio moves between windows,
the machine itself, not charrnn's engine, makes multi-threaded timings move (the
training rows of `make bench` and the speed a time budget plans with).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

WORKER = r"""
import sys, time
import numpy as np
from numba import njit, prange, get_num_threads

@njit(parallel=True, fastmath=True, cache=False)
def work(a, reps):
    # thread w updates row w only: nothing shared, nothing to wait for
    for w in prange(a.shape[0]):
        row = a[w]
        for _ in range(reps):
            for i in range(row.size):
                row[i] = row[i] * np.float32(0.999) + np.float32(0.001)

seconds, window = float(sys.argv[1]), float(sys.argv[2])
a = np.ones((get_num_threads(), 4096), np.float32)
work(a, 1)
start = last = time.perf_counter()
done, rates = 0, []
while time.perf_counter() - start < seconds:
    work(a, 5000)
    done += 1
    now = time.perf_counter()
    if now - last >= window:
        rates.append(done * a.shape[0] / (now - last))  # thread-regions a second
        done, last = 0, now
print(" ".join(f"{r:.1f}" for r in rates))
"""


def rates(threads: int, seconds: float, window: float) -> list[float]:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(seconds), str(window)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return [float(x) for x in out.split()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="how long the N-thread run lasts (default 30)")
    p.add_argument("--window", type=float, default=2.0, help="seconds per figure (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="N (default: all cores)")
    args = p.parse_args(argv)
    one = rates(1, min(args.seconds, 10.0), args.window)
    base = sorted(one)[len(one) // 2]
    many = rates(args.threads, args.seconds, args.window)
    print(f"one thread: {base:.1f} regions/s (median of {len(one)} windows of {args.window:g}s)")
    ratios = [r / base for r in many]
    print(f"{args.threads} threads, each window as a multiple of one thread:")
    print("  " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"  min {min(ratios):.2f}, median {sorted(ratios)[len(ratios) // 2]:.2f}, max {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
