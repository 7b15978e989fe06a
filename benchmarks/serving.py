"""How fast `charrnn serve` is: aggregate characters/s and time to first character
for 1, 4, 16 and 64 concurrent streaming clients, against batch-1 `charrnn sample`,
with the achieved GFLOP/s against a measured GEMM peak.

    python -m benchmarks.serving                 # LSTM 2x256, 2000 characters a client
    python -m benchmarks.serving --chars 500 --clients 1,16

Self-contained (it uses nothing else in benchmarks/): it trains an LSTM 2x256 for a
few steps on data/tinyshakespeare.txt (the shape and vocabulary are what count, not
the weights), starts `charrnn serve` on a free loopback port, and drives it with
httpx clients in this process. The clients share the machine with the server, as
they would on a 2-core box; run it on an otherwise idle machine.

Targets (2 cores): 16 clients together >= 2.5x one client's characters/s; the
slowest of 16 clients sees its first character within 100 ms; one client through
the server gets at least half of `charrnn sample`'s batch-1 characters/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "tinyshakespeare.txt"
SHAPE = dict(cell="lstm", layers=2, hidden=256, embed=64)
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def forward_flops_per_char(cell: str, layers: int, hidden: int, embed: int, vocab: int) -> int:
    """2*G*H*(D + H) per layer (D: the layer's input width) plus 2*H*V for the decoder."""
    g = GATES[cell]
    return sum(2 * g * hidden * ((embed if k == 0 else hidden) + hidden) for k in range(layers)) + 2 * hidden * vocab


def make_checkpoint(out: Path) -> Path:
    """An LSTM 2x256 trained for a few steps (the shape and vocabulary of the real thing)."""
    import charrnn

    corpus = out / "corpus.txt"
    corpus.write_text(CORPUS.read_text()[:300_000])
    run = charrnn.train(corpus, out / "run", progress=False, max_steps=10, eval_every=10, val_frac=0.02, **SHAPE)
    return Path(run.best)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return {**env, **extra}


SAMPLE_CODE = """
import sys, time, charrnn
model = charrnn.load(sys.argv[1])
n = int(sys.argv[2])
model.generate("ROMEO:", length=200, seed=0)  # load the compiled engine
rates = []
for seed in (1, 2, 3):
    t = time.perf_counter()
    model.generate("ROMEO:", length=n, seed=seed)
    rates.append(n / (time.perf_counter() - t))
print(sorted(rates)[1])
"""


def sample_rate(checkpoint: Path, chars: int, threads: int | None = None) -> float:
    """Batch-1 characters/s of `charrnn sample` (its code path: Model.generate, 64
    characters an engine call), the median of three runs, in a fresh process."""
    env = clean_env(**({"NUMBA_NUM_THREADS": str(threads)} if threads else {}))
    out = subprocess.run([sys.executable, "-c", SAMPLE_CODE, str(checkpoint), str(chars)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


GEMM_CODE = """
import time, numpy as np
a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
b = np.random.default_rng(1).random((2048, 2048), dtype=np.float32)
a @ b
best = min((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(2 * 2048 ** 3 / best / 1e9)
"""


def gemm_peak() -> float:
    """GFLOP/s of numpy's float32 2048^3 matmul on 2 threads (best of 5), with
    OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset so that OpenBLAS picks its own kernel."""
    env = clean_env(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", GEMM_CODE], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


class Server:
    """`charrnn serve` on a free loopback port."""

    def __init__(self, checkpoint: Path, *args: str):
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", str(checkpoint), "--port", "0",
                                      *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
                                     text=True, env=clean_env())
        deadline, self.url = time.monotonic() + 120, None
        while self.url is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"charrnn serve did not start: {self.stderr()}")
            match = re.search(r" on (http://\S+) ", self.stderr())
            if match:
                self.url = match.group(1)
            time.sleep(0.05)

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def one_client(client, body: dict) -> tuple[int, float]:
    """(characters received, seconds to the first one) of one streamed request."""
    chars, first, start = 0, None, time.perf_counter()
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                text = json.loads(line[6:])["choices"][0]["text"]
                if text and first is None:
                    first = time.perf_counter() - start
                chars += len(text)
    return chars, first


async def level(url: str, clients: int, chars: int, seed: int) -> tuple[float, list[float]]:
    """(aggregate characters/s, each client's seconds to first character) of
    `clients` streaming clients started together."""
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one_client(client, {"prompt": "ROMEO:", "max_tokens": 50, "seed": 0, "stream": True})  # warm
        bodies = [{"prompt": "ROMEO:", "max_tokens": chars, "seed": seed + i, "stream": True} for i in range(clients)]
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, b) for b in bodies))
        elapsed = time.perf_counter() - start
    total = sum(n for n, _ in results)
    assert total == clients * chars, (total, clients * chars)
    return total / elapsed, [f for _, f in results]


def summary(runs: list[tuple[float, list[float]]], clients: int) -> dict:
    """The median rate of a level's runs; the median and slowest first character over all of them."""
    rates, firsts = [r for r, _ in runs], [f for _, fs in runs for f in fs]
    return {"clients": clients, "rate": statistics.median(rates), "per_client": statistics.median(rates) / clients,
            "ttfc_median": statistics.median(firsts), "ttfc_max": max(firsts)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=2000, help="characters per client (default 2000)")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrency levels (default 1,4,16,64)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each level; the median rate is shown")
    parser.add_argument("--checkpoint", help="an LSTM checkpoint to serve instead of training a 2x256 one")
    parser.add_argument("--no-compare", action="store_true", help="skip the 2-engine-thread server")
    parser.add_argument("--json", type=Path, help="also write the figures to this file (make bench's serving section)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="charrnn-serving-") as tmp:
        print("making an LSTM 2x256 checkpoint (10 training steps) ...", file=sys.stderr, flush=True)
        checkpoint = Path(args.checkpoint) if args.checkpoint else make_checkpoint(Path(tmp))
        import charrnn

        cfg = charrnn.load(checkpoint).config
        flops = forward_flops_per_char(cfg.cell, cfg.layers, cfg.hidden, cfg.embed, cfg.vocab_size)
        print("measuring the GEMM peak ...", file=sys.stderr, flush=True)
        peak = gemm_peak()
        configs = [("1 engine thread (default)", (), levels)]
        if not args.no_compare:
            configs.append(("2 engine threads", ("--threads", "2"), [c for c in levels if c in (1, 16)]))
        servers = [Server(checkpoint, "--max-length", str(args.chars), *extra) for _, extra, _ in configs]
        runs: dict = {}
        try:
            # Round by round, every setup in turn: a change in the machine's load
            # during the run then touches every row alike.
            for r in range(args.rounds):
                print(f"round {r + 1} of {args.rounds}: charrnn sample ...", file=sys.stderr, flush=True)
                runs.setdefault("sample2", []).append(sample_rate(checkpoint, max(5000, args.chars)))
                runs.setdefault("sample1", []).append(sample_rate(checkpoint, max(5000, args.chars), threads=1))
                for (name, _, config_levels), server in zip(configs, servers):
                    for clients in config_levels:
                        run = asyncio.run(level(server.url, clients, args.chars, 1000 * r))
                        runs.setdefault((name, clients), []).append(run)
                        print(f"  {name}, {clients:>3} clients: {run[0]:,.0f} chars/s", file=sys.stderr, flush=True)
        finally:
            for server in servers:
                server.stop()
        sample2, sample1 = statistics.median(runs.pop("sample2")), statistics.median(runs.pop("sample1"))
        results = {key: summary(value, key[1]) for key, value in runs.items()}

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    isa = "AVX-512" if "avx512f" in lscpu else "AVX2" if "avx2" in lscpu else "no AVX2"
    print(f"\nLSTM {cfg.layers}x{cfg.hidden} (embedding {cfg.embed}, {cfg.vocab_size} characters), {args.chars} "
          f"characters a client, median of {args.rounds} runs; {os.cpu_count()} cores"
          f"{', ' + model.group(1).strip() if model else ''}, {isa}; load average at the start "
          f"{load_before:.1f}, at the end {os.getloadavg()[0]:.1f}")
    print(f"forward FLOPs per character: {flops:,}; numpy float32 2048^3 GEMM on 2 threads: {peak:.0f} GFLOP/s\n")
    header = (f"{'setup':<40} {'clients':>7} {'chars/s':>9} {'per client':>10} {'TTFC median':>11} {'TTFC max':>9} "
              f"{'GFLOP/s':>8} {'% peak':>6}")
    print(header)
    print("-" * len(header))

    def row(name, clients, rate, per_client, ttfc_median=None, ttfc_max=None):
        ms = (lambda s: f"{1000 * s:.1f} ms" if s is not None else "")
        gflops = rate * flops / 1e9
        print(f"{name:<40} {clients:>7} {rate:>9,.0f} {per_client:>10,.0f} {ms(ttfc_median):>11} {ms(ttfc_max):>9} "
              f"{gflops:>8.1f} {100 * gflops / peak:>5.1f}%")

    row("charrnn sample, batch 1 (2 threads)", 1, sample2, sample2)
    row("charrnn sample, batch 1 (1 thread)", 1, sample1, sample1)
    for (name, clients), r in results.items():
        row(f"serve, {name}", clients, r["rate"], r["per_client"], r["ttfc_median"], r["ttfc_max"])

    if args.json:
        rows = [{"setup": f"serve, {name}", "clients": clients, **r, "gflops": r["rate"] * flops / 1e9}
                for (name, clients), r in results.items()]
        args.json.write_text(json.dumps({
            "model": f"{cfg.cell}-{cfg.layers}x{cfg.hidden}", "chars": args.chars, "rounds": args.rounds,
            "peak_gflops": peak, "flops_per_char": flops, "sample_2_threads": sample2, "sample_1_thread": sample1,
            "rows": rows}))
    default = "1 engine thread (default)"
    one, sixteen = results.get((default, 1)), results.get((default, 16))
    if one and sixteen:
        print("\ntargets:")
        print(f"  16 clients / 1 client: {sixteen['rate'] / one['rate']:.2f}x (target >= 2.5x)")
        print(f"  slowest first character of 16 clients: {1000 * sixteen['ttfc_max']:.1f} ms (target <= 100 ms)")
        print(f"  1 client / charrnn sample batch 1: {one['rate'] / sample2:.2f} (target >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
