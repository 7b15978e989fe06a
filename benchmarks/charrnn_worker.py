"""One charrnn measurement per process: python -m benchmarks.charrnn_worker SPEC_JSON.

Drives charrnn's public paths: charrnn.training.Trainer.train_step (the step `charrnn
train` runs, without its evaluation and checkpoint I/O), charrnn.sample.generate
and charrnn.evaluate.load_text + score_ids (what `charrnn evaluate` runs). Never
imports torch. The thread count comes from NUMBA_NUM_THREADS, set by the
orchestrator (and, with --isa, CHARRNN_ISA).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import tempfile
import time
from statistics import median

from benchmarks.common import BATCH, CORPUS, EMBED, GRAD_CLIP, LR, SEED, SEQ, time_generation, worker_main

perf = time.perf_counter


def _import_engine() -> float:
    """Import the engine and every kernel module; returns the seconds it took."""
    t0 = perf()
    import charrnn.kernels
    import charrnn.network  # noqa: F401  (the engine, numba)
    import charrnn.optim  # noqa: F401

    for module in pkgutil.iter_modules(charrnn.kernels.__path__):
        importlib.import_module(f"charrnn.kernels.{module.name}")
    return perf() - t0


def _compile_stats() -> dict:
    """How many kernel signatures this process compiled (cache misses) and loaded
    from Numba's cache (hits), over every dispatcher in charrnn's modules."""
    from numba.core.registry import CPUDispatcher

    hits = misses = 0
    seen = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("charrnn") or module is None:
            continue
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and id(obj) not in seen:
                seen.add(id(obj))
                stats = obj.stats
                hits += sum(stats.cache_hits.values())
                misses += sum(stats.cache_misses.values())
    return {"cache_hits": hits, "compiled": misses}


def _facts() -> dict:
    """What the process ran with (threads, the --isa limit it was given) and what it
    compiled."""
    from charrnn.engine import threads

    return {"threads": threads(), "charrnn_isa": os.environ.get("CHARRNN_ISA"), **_compile_stats()}


def _network(spec):
    from charrnn.checkpoint import load_checkpoint
    from charrnn.network import Network

    ckpt = load_checkpoint(spec["checkpoint"], with_training_state=False)
    return ckpt, Network(ckpt.config, ckpt.params)


def _trainer(spec, prefix: str, **flags):
    """A Trainer on the corpus with the row's model and the benchmark's shapes."""
    from charrnn.training import Trainer

    out = tempfile.mkdtemp(prefix=prefix, dir=spec["workdir"])
    model = dict(cell=spec["cell"], layers=spec["layers"], hidden=spec["hidden"], embed=EMBED, dropout=0.0)
    flags = dict(batch_size=BATCH, seq_len=SEQ, seed=SEED, max_steps=10**9, eval_every=10**9, **flags)
    return Trainer(CORPUS, out, model, flags, progress=False)


def train(spec) -> dict:
    """Time Trainer.train_step: zero the gradients, loss_and_grad on a (T, B) batch
    with the carried state, the global norm, Adam (clipping inside it) writing the
    weights. The first step (compile or cache load, weight packing, workspace
    allocation) is reported on its own."""
    import_s = _import_engine()
    from charrnn.model import RecurrentState

    t0 = perf()
    trainer = _trainer(spec, "train-", lr=LR, grad_clip=GRAD_CLIP, precision=spec.get("precision", "float32"))
    setup_s = perf() - t0
    state = RecurrentState.zeros(trainer.cfg, BATCH)
    total = spec["warmup"] + spec["steps"]
    if total > trainer.state.steps_per_epoch:  # a new epoch would reset the carried state
        raise SystemExit(f"{total} steps exceed one epoch ({trainer.state.steps_per_epoch})")
    times, losses = [], []
    for _ in range(total):
        t0 = perf()
        loss, state = trainer.train_step(state, 0.0)
        trainer.state.step += 1  # as Trainer.run does after each step
        times.append(perf() - t0)
        losses.append(float(loss))
    timed = times[spec["warmup"]:]
    step_s = median(timed)
    return {"import_s": import_s, "setup_s": setup_s, "first_step_s": times[0], "step_times": timed,
            "median_step_s": step_s, "chars_per_s": BATCH * SEQ / step_s, "losses": losses,
            "precision": trainer.tcfg.precision, **_facts()}


def sample(spec) -> dict:
    """Time charrnn.sample.generate: one sample, temperature 1, batch 1."""
    import_s = _import_engine()
    from charrnn.sample import generate

    ckpt, net = _network(spec)
    first_s, times = time_generation(lambda n, seed: generate(net, ckpt.vocab, n, temperature=1.0, seed=seed), spec)
    return {"import_s": import_s, "first_call_s": first_s, "times": times,
            "chars_per_s": spec["chars"] / median(times), **_facts()}


def evaluate(spec) -> dict:
    """Time charrnn.evaluate.score_ids(net, ids, streams=1) on a text file, as
    `charrnn evaluate` runs it (the file is read once, untimed)."""
    import_s = _import_engine()
    from charrnn.evaluate import load_text, score_ids

    ckpt, net = _network(spec)
    ids = load_text(spec["text"], ckpt.vocab).ids
    t0 = perf()
    score_ids(net, ids[:min(len(ids), spec.get("warmup_chars", 2000))], streams=1)
    first_s = perf() - t0
    times, nats = [], None
    for _ in range(spec["reps"]):
        t0 = perf()
        total, count = score_ids(net, ids, streams=1)
        times.append(perf() - t0)
        nats = total / count
    return {"import_s": import_s, "first_call_s": first_s, "times": times, "chars": int(count),
            "chars_per_s": count / median(times), "nats_per_char": nats, **_facts()}


def compile_cold(spec) -> dict:
    """In a process with an empty Numba cache: how long the first training step,
    the first sample and the first evaluation take (compilation, mostly)."""
    import_s = _import_engine()
    from charrnn.evaluate import load_text, score_ids
    from charrnn.model import RecurrentState
    from charrnn.sample import generate

    trainer = _trainer(spec, "compile-", precision=spec.get("precision", "float32"))  # bf16 kernels are others
    state = RecurrentState.zeros(trainer.cfg, BATCH)
    t0 = perf()
    trainer.train_step(state, 0.0)
    train_s = perf() - t0
    after_train = _compile_stats()["compiled"]
    ckpt, net = _network(spec)
    t0 = perf()
    generate(net, ckpt.vocab, 20, temperature=1.0, seed=SEED)
    sample_s = perf() - t0
    ids = load_text(spec["text"], ckpt.vocab).ids[:2000]
    t0 = perf()
    score_ids(net, ids, streams=1)
    evaluate_s = perf() - t0
    return {"import_s": import_s, "train_first_step_s": train_s, "sample_first_call_s": sample_s,
            "evaluate_first_call_s": evaluate_s, "compiled_by_train": after_train,
            **_facts()}


if __name__ == "__main__":
    worker_main({"train": train, "sample": sample, "evaluate": evaluate, "compile": compile_cold})
