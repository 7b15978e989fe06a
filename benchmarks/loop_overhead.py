"""How much of an LSTM time loop is its recurrent product, and what a wavefront could
save: python -m benchmarks.loop_overhead [--hidden 512] [--reps 15].

One layer, B=50, T=50 (the benchmark's shapes), float32, in one process; the variants
take turns, --reps times each, and the report gives medians (min in brackets):

  forward loop      lstm_recurrence: per step the product h @ w_hh.T split across
                    the threads by panels, a barrier, the cell split by units, a barrier
  forward products  the same T products alone (gemm, split the same way)
  backward loop     lstm_recurrence_backward, and its T products alone
  1-thread product  the same T products on one thread

Resetting the inputs (acts, and for the backward loop the gate activations it
overwrites) is not timed; before 653d62b the forward loop's time included that copy.

loop - products is what the cell and the barriers cost. A wavefront (layer l at step t
on one core beside layer l-1 at step t+1 on the other) would replace two split
products by two single-thread ones running side by side: per pair of layers it saves
at most 2 x (2-thread products) - (1-thread products), the price of splitting.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

perf = time.perf_counter


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loop_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)

    from charrnn.engine import packed, product, threads
    from charrnn.kernels.lstm import lstm_recurrence, lstm_recurrence_backward

    T, B, H, f = args.steps, args.batch, args.hidden, np.float32
    nthreads = threads()
    rng = np.random.default_rng(0)
    w_hh = (rng.standard_normal((4 * H, H)) / np.sqrt(H)).astype(f)
    hh_t, hh = packed(w_hh, True, nthreads), packed(w_hh, False, nthreads)
    acts_in = rng.standard_normal((T, B, 4 * H)).astype(f)
    dhs = rng.standard_normal((T, B, H)).astype(f)
    h0, c0 = np.zeros((B, H), f), np.zeros((B, H), f)
    hs, cs, acts = np.zeros((T, B, H), f), np.zeros((T, B, H), f), np.zeros((T, B, 4 * H), f)
    dacts, dh, dc = np.zeros((T, B, 4 * H), f), np.zeros((B, H), f), np.zeros((B, H), f)
    acts[...] = acts_in
    lstm_recurrence(hs, cs, acts, h0, c0, hh_t, nthreads)
    gates = acts.copy()  # what the backward loop starts from (it replaces them by their gradients)

    def forward_setup():
        acts[...] = acts_in

    def forward_loop():
        lstm_recurrence(hs, cs, acts, h0, c0, hh_t, nthreads)

    def backward_setup():
        dacts[...] = gates
        dh[...] = 0.0
        dc[...] = 0.0

    def backward_loop():
        lstm_recurrence_backward(dacts, dh, dc, dhs, cs, c0, hh, nthreads)

    def products(bp, a, out, n):
        def run():
            for t in range(T):
                product(out[t], a[t], False, bp, n)
        return run

    def untimed_setup():
        pass

    variants = {  # name: (untimed setup, timed run)
        "forward loop": (forward_setup, forward_loop),
        "forward products": (untimed_setup, products(hh_t, hs, acts, nthreads)),
        "backward loop": (backward_setup, backward_loop),
        "backward products": (untimed_setup, products(hh, dacts, np.zeros((T, B, H), f), nthreads)),
        "1-thread forward products": (untimed_setup, products(hh_t, hs, acts, 1)),
        "1-thread backward products": (untimed_setup, products(hh, dacts, np.zeros((T, B, H), f), 1)),
    }
    times = {name: [] for name in variants}
    for setup, fn in variants.values():  # compile / warm up
        setup()
        fn()
    for _ in range(args.reps):
        for name, (setup, fn) in variants.items():
            setup()
            t0 = perf()
            fn()
            times[name].append(perf() - t0)
    ms = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
    print(f"LSTM layer, H={H}, B={B}, T={T}, {nthreads} threads, float32; median (min) ms over {args.reps} runs")
    for name, v in times.items():
        print(f"  {name:<28} {ms[name]:8.2f}  ({1e3 * min(v):.2f})")
    for way in ("forward", "backward"):
        over = ms[f"{way} loop"] - ms[f"{way} products"]
        split = 2 * ms[f"{way} products"] - ms[f"1-thread {way} products"]
        saving = (f"at most {split:.2f} ms per pair of layers ({100 * split / (2 * ms[f'{way} loop']):.0f}% of two loops)"
                  if split > 0 else "nothing: one thread takes at least twice as long as two")
        print(f"  {way}: cell and barriers {over:.2f} ms ({100 * over / ms[f'{way} loop']:.0f}% of the loop); "
              f"a wavefront saves {saving}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
