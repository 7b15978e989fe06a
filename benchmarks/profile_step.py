"""Where a training step's time goes: python -m benchmarks.profile_step [--model lstm-2x512].

Times one optimiser step of charrnn (B=50, T=50, embedding 64, the benchmark's
shapes) split by phase, by wrapping the engine's Python-level calls with a clock
(every kernel returns only when all its threads are done). Median milliseconds
per step over --steps steps after --warmup, and each phase's share of the step
(a call inside another timed call counts towards the outer one):

  time loop, forward     layer_forward: the recurrent product and the cell, step by step
  time loop, backward    layer_backward: the same in reverse
  products               whole-batch products: input sides above layer 0, decoder,
                         weight gradients of w_ih and the decoder, dy for the layer below
  w_hh gradients         recurrent_weight_gradients: w_hh and bias gradients over T*B rows
                         (since 653d62b the bias sums are taken inside the products,
                         and the decoder's bias gradient inside its product)
  packing                weights packed into panels after each Adam step
  loss                   softmax cross-entropy and its gradient
  optimiser              gradient norm and Adam
  other                  the rest (gathers, scatters, the GRU's b_ih sums, Python)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np

perf = time.perf_counter


def parse_model(text: str) -> tuple[str, int, int]:
    cell, size = text.split("-")
    layers, hidden = size.split("x")
    return cell, int(layers), int(hidden)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lstm-2x512", help="cell-LAYERSxHIDDEN (default lstm-2x512)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    cell, layers, hidden = parse_model(args.model)

    import charrnn.engine as engine
    import charrnn.kernels.loss as loss_kernels
    import charrnn.kernels.optim as optim
    from charrnn.model import ModelConfig, Network, ParamBuffer, RecurrentState, init_params

    spent = defaultdict(float)
    depth = [0]

    def timed(name, fn):
        """fn, its time added to spent[name] unless it runs inside another timed
        call (packing and w_hh gradients call product themselves)."""
        def wrapper(*a, **k):
            depth[0] += 1
            t0 = perf()
            try:
                return fn(*a, **k)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[name] += perf() - t0
        return wrapper

    engine.layer_forward = timed("time loop, forward", engine.layer_forward)
    engine.layer_backward = timed("time loop, backward", engine.layer_backward)
    engine.product = timed("products", engine.product)
    engine.recurrent_weight_gradients = timed("w_hh gradients", engine.recurrent_weight_gradients)
    engine.PackedWeights.for_backward = timed("packing", engine.PackedWeights.for_backward)
    engine.PackedWeights = timed("packing", engine.PackedWeights)
    loss_kernels.softmax_xent_backward = timed("loss", loss_kernels.softmax_xent_backward)

    B, T, V, E = 50, 50, 65, 64
    cfg = ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=hidden, embed=E)
    params = ParamBuffer(cfg, np.float32)
    init_params(params, np.random.default_rng(0))
    grads, m, v = params.zeros_like(), params.zeros_like(), params.zeros_like()
    net = Network(cfg, params)
    rng = np.random.default_rng(1)
    state = RecurrentState.zeros(cfg, B)
    nthreads = engine.threads()
    rows, totals = [], []
    for step in range(args.warmup + args.steps):
        ids = rng.integers(0, V, (T + 1, B))
        spent.clear()
        t0 = perf()
        grads.flat[:] = 0.0
        _, state = net.loss_and_grad(ids[:-1], ids[1:], state, grads)
        t1 = perf()
        norm = np.sqrt(optim.sum_squares(grads.flat, nthreads))
        optim.adam_update(params.flat, grads.flat, m.flat, v.flat, 1e-3, 0.9, 0.999, 1e-8, step + 1, nthreads,
                          min(1.0, 5.0 / (norm + 1e-6)))
        params.touch()
        t2 = perf()
        spent["optimiser"] += t2 - t1
        if step >= args.warmup:
            rows.append(dict(spent))
            totals.append(t2 - t0)
    total = float(np.median(totals))
    flops_fwd = sum(2 * cfg.gates * hidden * ((E if k == 0 else hidden) + hidden) for k in range(layers)) + 2 * hidden * V
    print(f"charrnn training step, {args.model}, B={B}, T={T}, embedding {E}, {nthreads} threads: "
          f"median {total * 1e3:.1f} ms = {B * T / total:,.0f} chars/s, "
          f"{3 * flops_fwd * B * T / total / 1e9:.1f} GFLOP/s overall")
    names = ["time loop, forward", "time loop, backward", "products", "w_hh gradients", "packing", "loss", "optimiser"]
    accounted = 0.0
    for name in names:
        ms = float(np.median([r.get(name, 0.0) for r in rows]))
        accounted += ms
        print(f"  {name:<20} {ms * 1e3:8.2f} ms  {100 * ms / total:5.1f}%")
    print(f"  {'other':<20} {(total - accounted) * 1e3:8.2f} ms  {100 * (total - accounted) / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
