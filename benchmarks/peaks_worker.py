"""The machine's ceilings, one per process: python -m benchmarks.peaks_worker SPEC_JSON.

gemm: a float32 N x N x N matrix product by one library (torch.mm, numpy's matmul,
or charrnn's own tiles through engine.product, B packed once outside the timing as
training packs its weights once per step), best of several, with the thread count fixed.

bandwidth: the read bandwidth of summing a float32 array of each given size over
and over, on each given number of threads (each thread sums its own part, `reps` times,
with no synchronisation in between): the floor for batch-1 sampling, which must
read every weight once per character.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import worker_main

perf = time.perf_counter


def gemm(spec) -> dict:
    n, reps = spec["n"], spec["reps"]
    lib = spec.get("library", "torch")
    if lib == "torch":
        import torch

        torch.set_num_threads(spec["threads"])
        a, b = torch.randn(n, n), torch.randn(n, n)
        mm, version, threads = torch.mm, torch.__version__, torch.get_num_threads()
    else:
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
        mm, version, threads = np.matmul, np.__version__, spec["threads"]
        if lib == "charrnn":
            import charrnn
            from charrnn import engine

            b, out = engine.packed(b, False, threads), np.zeros((n, n), np.float32)
            mm, version = lambda a, b: engine.product(out, a, False, b, threads), charrnn.__version__
    mm(a, b)
    mm(a, b)
    times = []
    for _ in range(reps):
        t0 = perf()
        mm(a, b)
        times.append(perf() - t0)
    best = min(times)
    return {"library": lib, "version": version, "n": n, "threads": threads, "times": times,
            "gflops": 2 * n**3 / best / 1e9}


def bandwidth(spec) -> dict:
    import numba
    from numba import njit, prange

    @njit(fastmath=True)
    def sum_repeatedly(part, reps):
        # `part` is a slice, indexed from 0: with a variable start, Numba's handling
        # of negative indices would stop the loop from vectorising.
        acc = np.float32(0.0)
        for _ in range(reps):
            s = np.float32(0.0)
            for i in range(part.shape[0]):
                s += part[i]
            acc += s  # carried across repetitions: no pass can be hoisted out
        return acc

    @njit(parallel=True)
    def repeated_sum(a, reps, nthreads):
        total = 0.0
        for worker in prange(nthreads):
            lo = a.shape[0] * worker // nthreads
            hi = a.shape[0] * (worker + 1) // nthreads
            total += sum_repeatedly(a[lo:hi], reps)
        return total

    results = {}
    for nbytes in spec["sizes"]:
        a = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
        by_threads = {}
        for threads in spec["thread_counts"]:
            repeated_sum(a, 2, threads)  # compile, and bring the array into cache
            # Enough repetitions for ~0.2 s at 60 GB/s; best of several runs.
            reps = max(10, int(spec.get("seconds", 0.2) * 60e9 / a.nbytes))
            times = []
            for _ in range(spec["runs"]):
                t0 = perf()
                repeated_sum(a, reps, threads)
                times.append(perf() - t0)
            by_threads[str(threads)] = {"reps": reps, "times": times,
                                        "gbytes_per_s": reps * a.nbytes / min(times) / 1e9}
        results[str(int(a.nbytes))] = by_threads
    return {"numba": numba.__version__, "by_bytes": results}


if __name__ == "__main__":
    worker_main({"gemm": gemm, "bandwidth": bandwidth})
