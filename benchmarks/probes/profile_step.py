"""Where a training step's time goes: python -m benchmarks.probes.profile_step [--model lstm-2x512].

Times one optimiser step of charrnn (B=50, T=50, embedding 64, the benchmark's
shapes) split by phase, by wrapping the engine calls charrnn.network makes with a
clock (every kernel returns only when all its threads are done). Median
milliseconds per step over --steps steps after --warmup, and each phase's share of
the step (a call inside another timed call counts towards the outer one):

  time loop, forward     layer_forward: the recurrent product and the cell, step by step
  time loop, backward    layer_backward: the same in reverse
  products               whole-batch products: input sides above layer 0, decoder,
                         weight gradients of w_ih and the decoder, dy for the layer below
  w_hh gradients         recurrent_weight_gradients: w_hh and bias gradients over T*B rows
                         (the bias sums are taken inside the products, in bf16
                         in the backward time loop, and the decoder's bias
                         gradient inside its product)
  packing                weights packed into panels after each Adam step
  loss                   softmax cross-entropy and its gradient
  optimiser              gradient norm and Adam (charrnn.optim)
  other                  the rest (gathers, scatters, packing activations, the GRU's
                         b_ih sums, Python)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from statistics import median

from benchmarks.common import BATCH, EMBED, GRAD_CLIP, SEQ, parse_row, train_flops_per_char

perf = time.perf_counter
PHASES = ["time loop, forward", "time loop, backward", "products", "w_hh gradients", "packing", "loss", "optimiser"]
VOCAB = 65  # tinyshakespeare's


class Clock:
    """Seconds spent per phase in the current step."""

    def __init__(self):
        self.spent = defaultdict(float)
        self.depth = 0

    def timed(self, name, fn):
        """fn, its time added to spent[name] unless it runs inside another timed
        call (packing and w_hh gradients call product themselves)."""
        def wrapper(*a, **k):
            self.depth += 1
            t0 = perf()
            try:
                return fn(*a, **k)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.spent[name] += perf() - t0
        return wrapper


def instrument(clock: Clock) -> None:
    """Wrap the names charrnn.network calls the engine by (it imported them from
    charrnn.engine and the kernels, so those modules' own names would not do)."""
    import charrnn.network as network
    from charrnn.engine import PackedWeights

    for name, phase in [("layer_forward", "time loop, forward"), ("layer_backward", "time loop, backward"),
                        ("product", "products"), ("recurrent_weight_gradients", "w_hh gradients"),
                        ("softmax_xent_backward", "loss"), ("PackedWeights", "packing")]:
        setattr(network, name, clock.timed(phase, getattr(network, name)))
    PackedWeights.for_backward = clock.timed("packing", PackedWeights.for_backward)


def profile(row, steps: int, warmup: int, precision: str = "float32"):
    """(total seconds of each timed step, {phase: seconds} of each), threads."""
    import numpy as np

    from charrnn.config import ModelConfig
    from charrnn.engine import threads
    from charrnn.model import Parameters, RecurrentState, init_params
    from charrnn.network import Network
    from charrnn.optim import Adam, global_norm

    clock = Clock()
    instrument(clock)
    cfg = ModelConfig(vocab_size=VOCAB, cell=row.cell, layers=row.layers, hidden=row.hidden, embed=EMBED)
    params = Parameters(cfg, np.float32)
    init_params(params, np.random.default_rng(0))
    net, optimizer, grads = Network(cfg, params, precision), Adam(params), params.zeros_like()
    rng = np.random.default_rng(1)
    state = RecurrentState.zeros(cfg, BATCH)
    totals, phases = [], []
    for step in range(warmup + steps):
        ids = rng.integers(0, VOCAB, (SEQ + 1, BATCH))
        clock.spent.clear()
        t0 = perf()
        grads.flat[:] = 0.0
        _, state = net.loss_and_grad(ids[:-1], ids[1:], state, grads, dropout_key=step)  # a training pass
        t1 = perf()
        optimizer.step(grads, 1e-3, step + 1, global_norm(grads), GRAD_CLIP)
        t2 = perf()
        clock.spent["optimiser"] += t2 - t1
        if step >= warmup:
            phases.append(dict(clock.spent))
            totals.append(t2 - t0)
    return totals, phases, threads()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probes.profile_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lstm-2x512", help="CELL-LAYERSxHIDDEN (default lstm-2x512)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                   help="the training setting precision (bf16: the products in bfloat16, on AMX or AVX512-BF16)")
    args = p.parse_args(argv)
    try:
        row = parse_row(args.model)
    except ValueError as e:
        p.error(str(e))
    totals, phases, nthreads = profile(row, args.steps, args.warmup, args.precision)
    total = median(totals)
    print(f"charrnn training step, {args.model}, B={BATCH}, T={SEQ}, embedding {EMBED}, {nthreads} threads: "
          f"median {total * 1e3:.1f} ms = {BATCH * SEQ / total:,.0f} chars/s, "
          f"{train_flops_per_char(row, VOCAB) * BATCH * SEQ / total / 1e9:.1f} GFLOP/s overall")
    accounted = 0.0
    for name in PHASES:
        seconds = median([r.get(name, 0.0) for r in phases])
        accounted += seconds
        print(f"  {name:<20} {seconds * 1e3:8.2f} ms  {100 * seconds / total:5.1f}%")
    print(f"  {'other':<20} {(total - accounted) * 1e3:8.2f} ms  {100 * (total - accounted) / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
