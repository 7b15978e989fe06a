"""How much of a recurrent layer's time loop is its recurrent product, and what a
wavefront could save: python -m benchmarks.probes.loop_overhead [--hidden 512] [--reps 15]
[--precision bf16].

One layer, B=50, T=50 (the benchmark's shapes), float32 (or its products in
bfloat16 on AMX tiles or AVX512-BF16, --precision bf16), in one process, through
the engine's own entry points; the variants take turns, --reps times each, and the
report gives medians (min in brackets):

  forward loop      engine.layer_forward: per step the product h @ w_hh.T split
                    across the threads by panels, a barrier, the cell split by
                    units, a barrier
  forward products  the same T products alone (gemm, split the same way)
  backward loop     engine.layer_backward, and its T products alone
  1-thread product  the same T products on one thread

Resetting the inputs (the input side, and for the backward loop the activations it
overwrites) is not timed.

loop - products is what the cell and the barriers cost. A wavefront (layer l at step t
on one core beside layer l-1 at step t+1 on the other) would replace two split
products by two single-thread ones running side by side: per pair of layers it saves
at most 2 x (2-thread products) - (1-thread products), the price of splitting.
"""

from __future__ import annotations

import argparse
import sys
import time
from statistics import median

from benchmarks.common import BATCH, EMBED, SEQ

perf = time.perf_counter


class Layer:
    """One layer's weights, buffers and inputs, as charrnn.network sets them up."""

    def __init__(self, cell: str, T: int, B: int, H: int, bf16: bool = False):
        import numpy as np

        from charrnn import engine
        from charrnn.config import ModelConfig

        cfg = ModelConfig(vocab_size=65, cell=cell, layers=1, hidden=H, embed=EMBED)
        rng = np.random.default_rng(0)
        G, f = cfg.gates, np.float32
        self.cell, self.n = cell, engine.threads()
        self.loop_n = engine.loop_threads(B, H, G, self.n)  # the threads layer_forward will use
        w = [(rng.standard_normal(s) / np.sqrt(H)).astype(f) for s in ((G * H, H), (G * H, H), (G * H,), (G * H,))]
        self.weights = engine.PackedLayer(cell, *w, self.n, bf16).for_backward(self.n)
        self.buf = engine.LayerBuffers(cell, T, B, H, G, f, dropout=False)
        self.ws = engine.Workspace(cfg, T, B, f, dropout=False)
        self.input_side = rng.standard_normal(self.buf.input_side().shape).astype(f)
        self.dhs = rng.standard_normal((T, B, H)).astype(f)
        self.h0, self.c0 = np.zeros((B, H), f), np.zeros((B, H), f)
        self.forward_setup()
        self.forward()
        self.after_forward = [a.copy() for a in (self.buf.acts, self.buf.hs_buf)]  # what backward starts from

    def forward_setup(self):
        self.buf.input_side()[...] = self.input_side

    def forward(self):
        from charrnn.engine import layer_forward

        layer_forward(self.cell, self.buf, self.weights, self.h0, self.c0, self.n)

    def backward_setup(self):
        # The LSTM's backward replaces its activations by their gradients.
        self.buf.acts[...], self.buf.hs_buf[...] = self.after_forward
        self.ws.dh[...] = 0.0
        self.ws.dc[...] = 0.0

    def backward(self):
        from charrnn.engine import layer_backward

        layer_backward(self.cell, self.buf, self.ws, self.weights, self.dhs, self.ws.dh, self.ws.dc, self.n)

    def products(self, backward: bool, nthreads: int):
        """The loop's T recurrent products alone, on nthreads threads."""
        import numpy as np

        from charrnn.engine import product

        T, B, H = self.dhs.shape
        G = self.weights.bias.shape[0] // H
        rng = np.random.default_rng(1)
        a = rng.standard_normal((T, B, G * H if backward else H)).astype(np.float32)
        out = np.zeros((T, B, H if backward else G * H), np.float32)
        packed = self.weights.hh if backward else self.weights.hh_t

        def run():
            for t in range(T):
                product(out[t], a[t], False, packed, nthreads)
        return run


def variants(layer: Layer) -> dict:
    """name: (untimed setup, timed run)."""
    def nothing():
        pass

    return {"forward loop": (layer.forward_setup, layer.forward),
            "forward products": (nothing, layer.products(False, layer.loop_n)),
            "backward loop": (layer.backward_setup, layer.backward),
            "backward products": (nothing, layer.products(True, layer.loop_n)),
            "1-thread forward products": (nothing, layer.products(False, 1)),
            "1-thread backward products": (nothing, layer.products(True, 1))}


def time_variants(runs: dict, reps: int) -> dict:
    """name: seconds of each rep, the variants taking turns (after a warm-up each)."""
    for setup, fn in runs.values():
        setup()
        fn()
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, (setup, fn) in runs.items():
            setup()
            t0 = perf()
            fn()
            times[name].append(perf() - t0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probes.loop_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--steps", type=int, default=SEQ)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--precision", default="float32", choices=["float32", "bf16"])
    args = p.parse_args(argv)
    layer = Layer(args.cell, args.steps, args.batch, args.hidden, args.precision == "bf16")
    times = time_variants(variants(layer), args.reps)
    ms = {name: 1e3 * median(v) for name, v in times.items()}
    print(f"{args.cell.upper()} layer, H={args.hidden}, B={args.batch}, T={args.steps}, {layer.loop_n} threads "
          f"in the loop, {args.precision}; median (min) ms over {args.reps} runs")
    for name, v in times.items():
        print(f"  {name:<28} {ms[name]:8.2f}  ({1e3 * min(v):.2f})")
    for way in ("forward", "backward"):
        over = ms[f"{way} loop"] - ms[f"{way} products"]
        split = 2 * ms[f"{way} products"] - ms[f"1-thread {way} products"]
        share = 100 * split / (2 * ms[f"{way} loop"])
        saving = (f"at most {split:.2f} ms per pair of layers ({share:.0f}% of two loops)" if split > 0
                  else "nothing: one thread takes at least twice as long as two")
        print(f"  {way}: cell and barriers {over:.2f} ms ({100 * over / ms[f'{way} loop']:.0f}% of the loop); "
              f"a wavefront saves {saving}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
