"""How fast this machine trains a model of a given shape, in characters per second:
measured once (about two seconds of optimiser steps on random weights) and remembered
in a cache keyed by everything the speed depends on -- the CPU, the compiled engine
(its sources and instruction set, which name its kernel cache), the thread count and
the shape -- so that choosing settings from a time budget (autoconfig.py) costs
seconds the first time and nothing after. A run's own measured speed updates the
entry.

What a plan needs is the speed a whole run keeps up, not the best burst: on a
shared machine the cores it gets vary (benchmarks/probes/cores.py shows it), and a
run of 2x128 that a three-step probe put at 95 k chars/s kept up 55 k. So the probe
times whole seconds, not a few steps, and the cache holds a running mean of what
probes and runs measured, not the fastest. And it times the steps a chosen plan takes,
with dropout and weight drop on: they cost about 8% of a step for 3x768 in bf16 on a
2-core Zen 5 (7.9 k chars/s without, 7.3 k with), and a probe without them planned a
20-minute run at 9 k chars/s that kept up 7.0 k."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np

from charrnn.config import ModelConfig
from charrnn.engine import threads
from charrnn.fileio import atomic_write_text
from charrnn.model import Parameters, RecurrentState, init_params
from charrnn.network import Network
from charrnn.optim import Adam, global_norm

WARM_STEPS, MIN_TIMED_STEPS, MIN_SECONDS = 2, 5, 2.0
# A probe's regularisation where its shape gives none: what it costs hardly depends on
# the rate, only on its being on, as in the plans autoconfig makes for all but the
# smallest exposures.
PROBE_DROPOUT = PROBE_WEIGHT_DROP = 0.1
KEEP = 0.5  # the weight of the old entry when a new measurement comes in


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "charrnn" / "speed.json"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def key(cfg: ModelConfig, batch: int, seq_len: int, precision: str = "float32", what: str = "training") -> str:
    engine = os.path.basename(numba.config.CACHE_DIR.rstrip(os.sep))
    return (f"{_cpu()}|{engine}|{threads()} threads|{cfg.cell} {cfg.layers}x{cfg.hidden} e{cfg.embed} "
            f"v{cfg.vocab_size}|{batch}x{seq_len}" + ("" if precision == "float32" else f"|{precision}")
            + ("" if what == "training" else f"|{what}"))


def _load() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):  # unreadable, or not JSON we wrote
        return {}


def remember(cfg: ModelConfig, batch: int, seq_len: int, chars_per_sec: float, precision: str = "float32") -> None:
    """Record a measured speed: the entry moves halfway to it (KEEP), so that one
    unusually fast or slow measurement does not decide the next plan alone (best
    effort: a cache that cannot be written is skipped)."""
    _store(key(cfg, batch, seq_len, precision), chars_per_sec)


def _store(k: str, chars_per_sec: float) -> None:
    data = _load()
    old = _speed(data.get(k))
    data[k] = round(KEEP * old + (1.0 - KEEP) * chars_per_sec if old is not None else chars_per_sec, 1)
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_path(), json.dumps(data, indent=1, sort_keys=True) + "\n")
    except Exception:  # noqa: BLE001 -- a speed cache is never worth failing a run for
        pass


def _speed(entry) -> float | None:
    """A cache entry's speed, None for a missing or unusable one."""
    if isinstance(entry, bool) or not isinstance(entry, (int, float)):
        return None
    try:
        speed = float(entry)
    except OverflowError:  # an integer beyond float's range: not a speed we wrote
        return None
    return speed if 0 < speed < math.inf else None


def known(cfg: ModelConfig, batch: int, seq_len: int, precision: str = "float32") -> bool:
    return _speed(_load().get(key(cfg, batch, seq_len, precision))) is not None


def chars_per_second(cfg: ModelConfig, batch: int, seq_len: int, precision: str = "float32") -> tuple[float, bool]:
    """(training chars/s, whether it was measured now rather than remembered)."""
    return _remembered(key(cfg, batch, seq_len, precision), lambda: measure(cfg, batch, seq_len, precision))


def validation_chars_per_second(cfg: ModelConfig, batch: int, seq_len: int) -> tuple[float, bool]:
    """(chars/s of validation as training runs it, whether it was measured now rather
    than remembered)."""
    return _remembered(key(cfg, batch, seq_len, what="validation"), lambda: measure_validation(cfg, batch, seq_len))


def _remembered(k: str, measure_now) -> tuple[float, bool]:
    known = _speed(_load().get(k))
    if known is not None:
        return known, False
    speed = measure_now()
    _store(k, speed)
    return speed, True


def measure(cfg: ModelConfig, batch: int, seq_len: int, precision: str = "float32") -> float:
    """Training speed of cfg's shape: characters over the time of full optimiser steps
    (forward, backward, clipping, Adam) on random weights and text, with dropout and
    weight drop (cfg's, else PROBE_DROPOUT and PROBE_WEIGHT_DROP), after WARM_STEPS
    untimed ones, for at least MIN_TIMED_STEPS steps and MIN_SECONDS."""
    cfg = replace(cfg, dropout=cfg.dropout or PROBE_DROPOUT, weight_drop=cfg.weight_drop or PROBE_WEIGHT_DROP)
    net, x, y = _random_network(cfg, batch, seq_len, precision)
    adam = Adam(net.params)
    grads = net.params.zeros_like()

    def optimiser_step(step: int) -> None:
        grads.flat[:] = 0.0
        net.loss_and_grad(x, y, RecurrentState.zeros(cfg, batch), grads,
                          dropout_key=step)
        adam.step(grads, 1e-4, step + 1, global_norm(grads), 5.0)

    return _rate(optimiser_step, batch * seq_len, WARM_STEPS, MIN_SECONDS)


def measure_validation(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """Validation speed of cfg's shape: characters over the time of float32 forward
    passes of `batch` streams of seq_len characters with the state carried (how training
    validates), after one untimed pass, for at least MIN_TIMED_STEPS passes and half of
    MIN_SECONDS. A large model can spend much of each minute validating: 3x768 took
    about 36 s of every minute on a 2-core Xeon."""
    net, x, y = _random_network(cfg, batch, seq_len)
    state = RecurrentState.zeros(cfg, batch)

    def forward(_: int) -> None:
        nonlocal state
        _, state = net.loss_sum(x, y, state)

    return _rate(forward, batch * seq_len, 1, MIN_SECONDS / 2)


def _random_network(cfg: ModelConfig, batch: int, seq_len: int, precision: str = "float32"):
    """A Network of cfg's shape on random weights, and random (seq_len, batch) ids x, y."""
    rng = np.random.default_rng(0)
    params = Parameters(cfg, np.float32)
    init_params(params, rng)
    x = rng.integers(0, cfg.vocab_size, (seq_len, batch))
    y = rng.integers(0, cfg.vocab_size, (seq_len, batch))
    return Network(cfg, params, precision), x, y


def _rate(run_once, chars: int, warm: int, min_seconds: float) -> float:
    """chars per second of run_once(i), called `warm` times untimed, then timed for at
    least MIN_TIMED_STEPS calls and min_seconds."""
    for i in range(warm):
        run_once(i)
    timed, t0 = 0, time.perf_counter()
    while timed < MIN_TIMED_STEPS or time.perf_counter() - t0 < min_seconds:
        run_once(warm + timed)
        timed += 1
    return timed * chars / (time.perf_counter() - t0)
