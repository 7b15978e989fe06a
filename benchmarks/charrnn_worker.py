"""One charrnn measurement per process: python -m benchmarks.charrnn_worker SPEC_JSON.

Drives charrnn's public paths: charrnn.train.Trainer.train_step (the step `charrnn
train` runs, without its evaluation and checkpoint I/O), charrnn.sample.generate
and charrnn.evaluate.load_text + score_ids (what `charrnn evaluate` runs). Never
imports torch. The thread count comes from NUMBA_NUM_THREADS, set by run.py.
"""

from __future__ import annotations

import sys
import tempfile
import time

from benchmarks.common import BATCH, CORPUS, EMBED, LR, GRAD_CLIP, SEED, SEQ, median, time_generation, worker_main

perf = time.perf_counter


def _import_engine() -> float:
    """Import the engine and every kernel module; returns the seconds it took."""
    t0 = perf()
    import charrnn.engine  # noqa: F401  (numba)
    import charrnn.kernels.gru  # noqa: F401
    import charrnn.kernels.loss  # noqa: F401
    import charrnn.kernels.lstm  # noqa: F401
    import charrnn.kernels.optim  # noqa: F401
    import charrnn.kernels.rnn  # noqa: F401
    import charrnn.kernels.sampling  # noqa: F401
    return perf() - t0


def _compile_stats() -> dict:
    """How many kernel signatures this process compiled (cache misses) and loaded
    from Numba's cache (hits), over every dispatcher in charrnn.kernels."""
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


def _threads() -> int:
    from charrnn.engine import threads

    return threads()


def _network(spec):
    from charrnn.checkpoint import load_checkpoint
    from charrnn.model import Network

    ckpt = load_checkpoint(spec["checkpoint"], with_training_state=False)
    return ckpt, Network(ckpt.config, ckpt.params)


def train(spec) -> dict:
    """Time Trainer.train_step: zero the gradients, loss_and_grad on a (T, B) batch
    with the carried state, clip, Adam, params.touch(). The first step (compile or
    cache load, weight packing, workspace allocation) is reported on its own."""
    import_s = _import_engine()
    from charrnn.model import RecurrentState
    from charrnn.train import Trainer

    t0 = perf()
    out = tempfile.mkdtemp(prefix="train-", dir=spec["workdir"])
    model = dict(cell=spec["cell"], layers=spec["layers"], hidden=spec["hidden"], embed=EMBED, dropout=0.0)
    flags = dict(batch_size=BATCH, seq_len=SEQ, lr=LR, grad_clip=GRAD_CLIP, seed=SEED,
                 max_steps=10**9, eval_every=10**9)
    trainer = Trainer(CORPUS, out, model, flags, progress=False)
    setup_s = perf() - t0
    state = RecurrentState.zeros(trainer.cfg, BATCH)
    total = spec["warmup"] + spec["steps"]
    if total > trainer.batches.steps_per_epoch:
        raise SystemExit(f"{total} steps exceed one epoch ({trainer.batches.steps_per_epoch})")
    times, losses = [], []
    for _ in range(total):
        t0 = perf()
        loss, state = trainer.train_step(state, 0.0)
        trainer.state["step"] += 1  # as Trainer.run does after each step
        times.append(perf() - t0)
        losses.append(float(loss))
    timed = times[spec["warmup"]:]
    step_s = median(timed)
    return {"import_s": import_s, "setup_s": setup_s, "first_step_s": times[0], "step_times": timed,
            "median_step_s": step_s, "chars_per_s": BATCH * SEQ / step_s, "losses": losses,
            "threads": _threads(), **_compile_stats()}


def sample(spec) -> dict:
    """Time charrnn.sample.generate: one sample, temperature 1, batch 1."""
    import_s = _import_engine()
    from charrnn.sample import generate

    ckpt, net = _network(spec)
    first_s, times = time_generation(lambda n, seed: generate(net, ckpt.vocab, n, temperature=1.0, seed=seed), spec)
    t = median(times)
    return {"import_s": import_s, "first_call_s": first_s, "times": times, "chars_per_s": spec["chars"] / t,
            "threads": _threads(), **_compile_stats()}


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
    t = median(times)
    return {"import_s": import_s, "first_call_s": first_s, "times": times, "chars": int(count),
            "chars_per_s": count / t, "nats_per_char": nats, "threads": _threads(), **_compile_stats()}


def compile_cold(spec) -> dict:
    """In a process with an empty Numba cache: how long the first training step,
    the first sample and the first evaluation take (compilation, mostly)."""
    import_s = _import_engine()
    from charrnn.evaluate import load_text, score_ids
    from charrnn.model import RecurrentState
    from charrnn.sample import generate
    from charrnn.train import Trainer

    out = tempfile.mkdtemp(prefix="compile-", dir=spec["workdir"])
    model = dict(cell=spec["cell"], layers=spec["layers"], hidden=spec["hidden"], embed=EMBED, dropout=0.0)
    flags = dict(batch_size=BATCH, seq_len=SEQ, seed=SEED, max_steps=10**9, eval_every=10**9)
    trainer = Trainer(CORPUS, out, model, flags, progress=False)
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
    stats = _compile_stats()
    return {"import_s": import_s, "train_first_step_s": train_s, "sample_first_call_s": sample_s,
            "evaluate_first_call_s": evaluate_s, "compiled_by_train": after_train,
            "threads": _threads(), **stats}


if __name__ == "__main__":
    worker_main({"train": train, "sample": sample, "evaluate": evaluate, "compile": compile_cold})
