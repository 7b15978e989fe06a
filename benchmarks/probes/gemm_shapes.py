"""charrnn's matrix products against NumPy's BLAS on the shapes of an LSTM training
step: python -m benchmarks.probes.gemm_shapes [--hidden 512] [--processes 3] [--threads 2] [--bf16]
[--isa avx2].

--bf16 adds charrnn's bfloat16 products on AMX tiles or AVX512-BF16, whichever the
CPU has (CHARRNN_BF16 picks; precision bf16; the
rounding of A to bfloat16 is inside the timing, as in training, the packing of B
is not) and PyTorch's bfloat16 matmul (if torch is installed; in its own processes;
its operands are converted to bfloat16 before the timing).

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
import importlib.util
import sys
import time
from statistics import median

from benchmarks.common import BATCH, ISA_LEVELS, SEQ, run_worker, thread_env, worker_main

LIBRARIES = ("charrnn", "numpy")
BF16_LIBRARIES = ("charrnn-bf16", "torch-bf16")


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

    if library.startswith("charrnn"):
        from charrnn.engine import packed, product, threads

        n = threads()
        bp = packed(b, False, n, bf16=library == "charrnn-bf16")
        return lambda: product(c, a, trans_a, bp, n)
    if library == "torch-bf16":
        import torch

        ta, tb = (torch.from_numpy(x).bfloat16() for x in (a, b))
        ta = ta.T if trans_a else ta
        tc = torch.empty((c.shape[0], c.shape[1]), dtype=torch.bfloat16)
        return lambda: torch.matmul(ta, tb, out=tc)
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
    p.add_argument("--bf16", action="store_true", help="also charrnn's bfloat16 products and PyTorch's bfloat16")
    p.add_argument("--isa", choices=ISA_LEVELS, help="limit charrnn's processes to this level (CHARRNN_ISA); NumPy's "
                                                   "BLAS keeps its own choice")
    args = p.parse_args(argv)
    if args.bf16 and args.isa not in (None, "avx512"):
        p.error(f"--bf16 needs AVX512-BF16 or AMX, which --isa {args.isa} leaves out")
    have_torch = importlib.util.find_spec("torch") is not None
    libraries = LIBRARIES + tuple(lib for lib in BF16_LIBRARIES if args.bf16 and (have_torch or lib != "torch-bf16"))
    runs = {lib: [] for lib in libraries}
    for _ in range(args.processes):
        for lib in libraries:
            spec = {"task": "time", "library": lib, "reps": args.reps, "hidden": args.hidden}
            env = thread_env(args.threads, library="charrnn" if lib.startswith("charrnn") else None, isa=args.isa)
            runs[lib].append(run_worker("probes.gemm_shapes", spec, env)["seconds"])
    level = f", charrnn at --isa {args.isa}" if args.isa else ""
    print(f"products, B={BATCH}, T={SEQ}, H={args.hidden}, {args.threads} threads{level}, GFLOP/s, median over "
          f"{args.processes} processes per library; ratio: charrnn / numpy (float32)")
    print(f"  {'shape':<16} {'M x K x N':>16} " + " ".join(f"{lib:>12}" for lib in runs) + f" {'ratio':>6}")
    for name, M, K, N, _, _ in shapes(args.hidden):
        rate = {lib: 2 * M * K * N / median([r[name] for r in rs]) / 1e9 for lib, rs in runs.items()}
        print(f"  {name:<16} {f'{M}x{K}x{N}':>16} " + " ".join(f"{rate[lib]:12.1f}" for lib in runs)
              + f" {rate['charrnn'] / rate['numpy']:6.2f}")
    return 0


if __name__ == "__main__":
    # A JSON spec as the only argument: a worker process (see run_worker).
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        worker_main({"time": time_shapes})
    else:
        sys.exit(main())
