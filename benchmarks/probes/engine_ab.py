"""A/B timings of two charrnn trees on one machine: python -m benchmarks.probes.engine_ab.

    python -m benchmarks.probes.engine_ab --a /tmp/base --b . --rounds 4 --models lstm-2x256,lstm-2x512

Each version runs in processes of its own (PYTHONPATH=its tree, plus its own
environment, e.g. --b-env CHARRNN_ISA=avx2), A and B alternating, --rounds times.
A version may be PyTorch instead of a tree ('torch'; limited to AVX2 with --a-env
ATEN_CPU_CAPABILITY=avx2 --a-env ONEDNN_MAX_CPU_ISA=AVX2 --a-env MKL_ENABLE_INSTRUCTIONS=AVX2);
each process times, per model (B=50, T=50, embedding 64, vocabulary 65, float32;
training in --precision, float32 by default):

  train     an optimiser step: loss_and_grad, global norm, Adam (chars/s)
  sample    Network.generate, batch 1, 64 characters per call (chars/s)
  evaluate  score_ids, one stream of 5,000 characters, 4 times (chars/s)

each from the median time of a process's repetitions and, as "best", from the
fastest one (on a shared machine, what the others' load let through the least).
The table gives, per measurement, each version's median over its processes, the
spread (min-max) and B/A. The machine may be shared: trust ratios that hold in
every round, not single figures. --worker runs one process (JSON on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

perf = time.perf_counter
B, T, E, V = 50, 50, 64, 65


def parse_model(text: str):
    cell, size = text.split("-")
    layers, hidden = size.split("x")
    return cell, int(layers), int(hidden)


def worker(models, what, steps, precision="float32"):
    from charrnn.config import ModelConfig
    from charrnn.evaluate import score_ids
    from charrnn.model import Parameters, RecurrentState, init_params
    from charrnn.network import Network
    from charrnn.optim import Adam, global_norm

    import charrnn

    out = {"tree": os.path.dirname(os.path.dirname(charrnn.__file__))}
    rng = np.random.default_rng(0)
    for spec in models:
        cell, layers, hidden = parse_model(spec)
        cfg = ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=hidden, embed=E)
        params = Parameters(cfg, np.float32)
        init_params(params, np.random.default_rng(0))
        net = Network(cfg, params)
        if "train" in what:
            train_net = Network(cfg, params, precision)
            adam, state = Adam(params), RecurrentState.zeros(cfg, B)
            grads = params.zeros_like()
            times = []
            for step in range(1, steps + 4):
                ids = rng.integers(0, V, (T + 1, B))
                t0 = perf()
                grads.flat[:] = 0.0
                _, state = train_net.loss_and_grad(ids[:-1], ids[1:], state, grads)
                adam.step(grads, 1e-3, step, global_norm(grads), 5.0)
                times.append(perf() - t0)
            out[f"{spec} train"] = B * T / float(np.median(times[3:]))
            out[f"{spec} train best"] = B * T / float(np.min(times[3:]))
        if "sample" in what:
            state = RecurrentState.zeros(cfg, 1)
            ids = np.zeros(1, np.int64)
            u = rng.random((64, 1))
            net.generate(ids, state, u)
            times = []
            for _ in range(max(10, 4 * steps)):
                t0 = perf()
                ids2, state = net.generate(ids, state, u)
                times.append(perf() - t0)
                ids = ids2[-1]
            out[f"{spec} sample"] = 64 / float(np.median(times))
            out[f"{spec} sample best"] = 64 / float(np.min(times))
        if "evaluate" in what:
            text = rng.integers(0, V, 5001)
            score_ids(net, text[:1000])
            times = []
            for _ in range(4):
                t0 = perf()
                score_ids(net, text)
                times.append(perf() - t0)
            out[f"{spec} evaluate"] = 5000 / float(np.median(times))
            out[f"{spec} evaluate best"] = 5000 / float(np.min(times))
    return out


def torch_worker(models, what, steps):
    """The same measurements with PyTorch (nn.Embedding -> nn.LSTM/GRU -> nn.Linear,
    Adam with clipping; sampling with multinomial; scoring in chunks of 1024),
    sampling at the faster of 2 threads and 1 thread with oneDNN off."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    out = {"tree": "torch"}
    rng = np.random.default_rng(0)
    for spec in models:
        cell, layers, hidden = parse_model(spec)
        torch.manual_seed(0)
        emb, rnn = nn.Embedding(V, E), {"lstm": nn.LSTM, "gru": nn.GRU}[cell](E, hidden, layers)
        dec = nn.Linear(hidden, V)
        params = [*emb.parameters(), *rnn.parameters(), *dec.parameters()]

        def model(x, state):
            y, state = rnn(emb(x), state)
            return dec(y), state

        if "train" in what:
            opt, state, times = torch.optim.Adam(params, lr=1e-3), None, []
            for _ in range(steps + 3):
                ids = torch.from_numpy(rng.integers(0, V, (T + 1, B)))
                t0 = perf()
                opt.zero_grad(set_to_none=True)
                logits, state = model(ids[:-1], state)
                F.cross_entropy(logits.reshape(-1, V), ids[1:].reshape(-1)).backward()
                torch.nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
                times.append(perf() - t0)
            out[f"{spec} train"] = B * T / float(np.median(times[3:]))
            out[f"{spec} train best"] = B * T / float(np.min(times[3:]))
        if "sample" in what:
            rates = []
            for threads, mkldnn in ((torch.get_num_threads(), True), (1, False)):
                torch.set_num_threads(threads)
                torch.backends.mkldnn.enabled = mkldnn
                times = []
                with torch.inference_mode():
                    x, state = torch.zeros((1, 1), dtype=torch.long), None
                    for k in range(max(10, 4 * steps) + 1):
                        t0 = perf()
                        for _ in range(64):
                            logits, state = model(x, state)
                            x = torch.multinomial(torch.softmax(logits[0, 0], -1), 1).view(1, 1)
                            int(x)
                        if k:
                            times.append(perf() - t0)
                rates.append((64 / float(np.median(times)), 64 / float(np.min(times))))
            torch.backends.mkldnn.enabled = True
            torch.set_num_threads(int(os.environ.get("NUMBA_NUM_THREADS", "2")))
            out[f"{spec} sample"] = max(r[0] for r in rates)
            out[f"{spec} sample best"] = max(r[1] for r in rates)
        if "evaluate" in what:
            text = torch.from_numpy(rng.integers(0, V, 5001))
            times = []
            with torch.no_grad():
                for _ in range(5):
                    t0, state = perf(), None
                    for start in range(0, 5000, 1024):
                        stop = min(5000, start + 1024)
                        logits, state = model(text[start:stop].view(-1, 1), state)
                        F.cross_entropy(logits.reshape(-1, V), text[start + 1:stop + 1], reduction="sum").item()
                    times.append(perf() - t0)
            out[f"{spec} evaluate"] = 5000 / float(np.median(times[1:]))
            out[f"{spec} evaluate best"] = 5000 / float(np.min(times[1:]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probes.engine_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default=None, help="tree of version A, or 'torch' (default: none, B only)")
    p.add_argument("--b", default=".", help="tree of version B, or 'torch'")
    p.add_argument("--a-env", action="append", default=[], help="NAME=VALUE for A's processes")
    p.add_argument("--b-env", action="append", default=[], help="NAME=VALUE for B's processes")
    p.add_argument("--models", default="lstm-2x256,lstm-2x512")
    p.add_argument("--what", default="train,sample,evaluate")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="float32", choices=["float32", "bf16"], help="of charrnn's training")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    models, what = args.models.split(","), args.what.split(",")
    if args.worker:
        if os.environ.get("ENGINE_AB_TORCH"):
            print(json.dumps(torch_worker(models, what, args.steps)))
        else:
            print(json.dumps(worker(models, what, args.steps, args.precision)))
        return 0
    versions = {name: (tree if tree == "torch" else os.path.abspath(tree), dict(e.split("=", 1) for e in env))
                for name, tree, env in (("A", args.a, args.a_env), ("B", args.b, args.b_env)) if tree}
    results = {name: [] for name in versions}
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for r in range(args.rounds):
        for name, (tree, extra) in versions.items():
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, here]), NUMBA_NUM_THREADS=str(args.threads),
                       OMP_NUM_THREADS="1", **extra)
            if tree == "torch":  # torch's threads: the same number; no charrnn on the path
                env.update(PYTHONPATH=here, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                           ENGINE_AB_TORCH="1")
            done = subprocess.run([sys.executable, "-m", "benchmarks.probes.engine_ab", "--worker", "--models",
                                   args.models, "--what", args.what, "--steps", str(args.steps), "--precision", args.precision],
                                  env=env, capture_output=True, text=True,
                                  cwd=here if tree == "torch" else tree)  # -m puts the cwd first
            if done.returncode:
                sys.stderr.write(done.stderr)
                return 1
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            got = results[name][-1]
            assert got.pop("tree") == tree, (tree, "imported another charrnn")
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in got.items()), flush=True)
    print(f"chars/s, median (min-max) over {args.rounds} processes per version, {args.threads} threads")
    for key in results["B"][0]:
        line = f"  {key:<22}"
        med = {}
        for name in versions:
            vals = [r[key] for r in results[name]]
            med[name] = float(np.median(vals))
            line += f" {name} {med[name]:>9,.0f} ({min(vals):,.0f}-{max(vals):,.0f})"
        if "A" in med:
            line += f"  B/A {med['B'] / med['A']:.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
