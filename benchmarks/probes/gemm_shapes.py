"""charrnn's matrix products against NumPy's BLAS on the shapes of an LSTM training
step: python -m benchmarks.probes.gemm_shapes [--hidden 512] [--processes 3] [--threads 2].

Each library runs in processes of its own (their worker threads disturb each other
in one process), alternating; each process times every shape --reps times and
reports medians, and the table gives the median over processes in GFLOP/s.

  step, forward    (B, H) @ (H, 4H): one time step's recurrent product
  step, backward   (B, 4H) @ (4H, H)
  input side       (T*B, H) @ (H, 4H): a layer's input side over the whole batch
  dy below         (T*B, 4H) @ (4H, H): the gradient passed to the layer below
  weight gradient  (T*B, 4H).T @ (T*B, H): dW_ih or dW_hh (A transposed)
"""

from __future__ import annotations

import argparse
import sys
import time
from statistics import median

from benchmarks.common import BATCH, SEQ, run_worker, thread_env, worker_main

LIBRARIES = ("charrnn", "numpy")


def shapes(hidden: int) -> list[tuple]:
    """(name, M, K, N, A transposed, products per timing) of each product."""
    B, T, H = BATCH, SEQ, hidden
    return [("step, forward", B, H, 4 * H, False, T),
            ("step, backward", B, 4 * H, H, False, T),
            ("input side", T * B, H, 4 * H, False, 1),
            ("dy below", T * B, 4 * H, H, False, 1),
            ("weight gradient", 4 * H, T * B, H, True, 1)]


def product_of(library: str, a, trans_a: bool, b, c):
    """A function computing c = op(a) @ b (charrnn: c += op(a) @ b) with `library`."""
    import numpy as np

    if library == "charrnn":
        from charrnn.engine import packed, product, threads

        n = threads()
        bp = packed(b, False, n)
        return lambda: product(c, a, trans_a, bp, n)
    op_a = a.T if trans_a else a
    return lambda: np.matmul(op_a, b, out=c)


def time_shapes(spec) -> dict:
    """Worker task: {shape name: median seconds per product} in this process."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for name, M, K, N, trans_a, count in shapes(spec["hidden"]):
        a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        run = product_of(spec["library"], a, trans_a, b, np.zeros((M, N), np.float32))
        run()
        times = []
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            for _ in range(count):
                run()
            times.append((time.perf_counter() - t0) / count)
        out[name] = median(times)
    return {"seconds": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probes.gemm_shapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512, help="H of the LSTM layer (default 512)")
    p.add_argument("--processes", type=int, default=3, help="processes per library (default 3)")
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    p.add_argument("--reps", type=int, default=9, help="timings per shape and process (default 9)")
    args = p.parse_args(argv)
    env = thread_env(args.threads)
    runs = {lib: [] for lib in LIBRARIES}
    for _ in range(args.processes):
        for lib in LIBRARIES:
            spec = {"task": "time", "library": lib, "reps": args.reps, "hidden": args.hidden}
            runs[lib].append(run_worker("probes.gemm_shapes", spec, env)["seconds"])
    print(f"float32 products, B={BATCH}, T={SEQ}, H={args.hidden}, {args.threads} threads, GFLOP/s, median over "
          f"{args.processes} processes per library")
    print(f"  {'shape':<16} {'M x K x N':>16} {'charrnn':>8} {'numpy':>8} {'ratio':>6}")
    for name, M, K, N, _, _ in shapes(args.hidden):
        rate = {lib: 2 * M * K * N / median([r[name] for r in rs]) / 1e9 for lib, rs in runs.items()}
        print(f"  {name:<16} {f'{M}x{K}x{N}':>16} {rate['charrnn']:8.1f} {rate['numpy']:8.1f} "
              f"{rate['charrnn'] / rate['numpy']:6.2f}")
    return 0


if __name__ == "__main__":
    # A JSON spec as the only argument: a worker process (see run_worker).
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        worker_main({"time": time_shapes})
    else:
        sys.exit(main())
