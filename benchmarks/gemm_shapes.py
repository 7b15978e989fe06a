"""charrnn's matrix products against NumPy's BLAS on the shapes of an LSTM 2x512
training step: python -m benchmarks.gemm_shapes [--processes 3] [--threads 2].

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
import json
import subprocess
import sys
import time

import numpy as np

B, T, H = 50, 50, 512
SHAPES = [  # name, M, K, N, A transposed, products per timing
    ("step, forward", B, H, 4 * H, False, T),
    ("step, backward", B, 4 * H, H, False, T),
    ("input side", T * B, H, 4 * H, False, 1),
    ("dy below", T * B, 4 * H, H, False, 1),
    ("weight gradient", 4 * H, T * B, H, True, 1),
]


def worker(library: str, reps: int) -> dict:
    """{shape name: median seconds per product} in this process."""
    if library == "charrnn":
        from charrnn.engine import packed, product, threads
    rng = np.random.default_rng(0)
    out = {}
    for name, M, K, N, trans_a, count in SHAPES:
        a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        c = np.zeros((M, N), np.float32)
        if library == "charrnn":
            bp, n = packed(b, False, threads()), threads()
            run = lambda: product(c, a, trans_a, bp, n)  # noqa: E731
        else:
            op_a = a.T if trans_a else a
            run = lambda: np.matmul(op_a, b, out=c)  # noqa: E731
        run()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(count):
                run()
            times.append((time.perf_counter() - t0) / count)
        out[name] = float(np.median(times))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gemm_shapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--worker", choices=["charrnn", "numpy"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.reps)))
        return 0
    from benchmarks.run import thread_env

    env = thread_env(args.threads)
    runs = {"charrnn": [], "numpy": []}
    for _ in range(args.processes):
        for library in runs:
            done = subprocess.run([sys.executable, "-m", "benchmarks.gemm_shapes", "--worker", library,
                                   "--reps", str(args.reps)], env=env, capture_output=True, text=True, check=True)
            runs[library].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"float32 products, {args.threads} threads, GFLOP/s, median over {args.processes} processes per library")
    print(f"  {'shape':<16} {'M x K x N':>16} {'charrnn':>8} {'numpy':>8} {'ratio':>6}")
    for name, M, K, N, trans_a, _ in SHAPES:
        rate = {lib: 2 * M * K * N / float(np.median([r[name] for r in rs])) / 1e9 for lib, rs in runs.items()}
        print(f"  {name:<16} {f'{M}x{K}x{N}':>16} {rate['charrnn']:8.1f} {rate['numpy']:8.1f} "
              f"{rate['charrnn'] / rate['numpy']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
