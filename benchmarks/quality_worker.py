"""The PyTorch reference of the quality benchmark, in a process of its own:
python -m benchmarks.quality_worker SPEC_JSON.

The issue's plain PyTorch LSTM: nn.Embedding(V, 64) -> nn.LSTM(64, 256, 2) ->
nn.Linear(256, V), PyTorch's own initialisation (seed 0), Adam at 2e-3 with the
gradient's norm clipped to 5, the hidden state carried from batch to batch and
detached, on charrnn's batch layout (torch_worker.Batches) of the same first 90% of the
corpus. It trains for spec["budget_s"] seconds of wall time, its learning rate
following spec["schedule"] over that time ("cosine" to 0, or "constant"), and
scores the whole validation split at each multiple of spec["eval_every_s"] and at
the end, as `charrnn train --eval-every 1m` does: evaluations count as training
time, for both. Never imports charrnn (nor Numba).
"""

from __future__ import annotations

import math
import time

import numpy as np

from benchmarks.common import BATCH, CORPUS, EMBED, LR, SEED, SEQ, worker_main
from benchmarks.torch_worker import Batches, char_rnn, split_train, text_ids, train_step

perf = time.perf_counter


def validate(model, val, vocab_size: int) -> float:
    """charrnn.evaluate.score_ids(streams=B, chunk=T) on the validation ids: the
    split cut into B contiguous streams scored side by side, state carried, and the
    remainder continuing the last stream. Mean nats per character."""
    import torch
    import torch.nn.functional as F

    model.eval()
    n_targets = val.numel() - 1
    streams = max(1, min(BATCH, n_targets))
    per_stream = n_targets // streams
    used = streams * per_stream
    x_all = val[:used].view(streams, per_stream)
    y_all = val[1:used + 1].view(streams, per_stream)
    total, state = 0.0, None
    with torch.no_grad():
        for start in range(0, per_stream, SEQ):
            stop = min(per_stream, start + SEQ)
            logits, state = model(x_all[:, start:stop].t().contiguous(), state)
            y = y_all[:, start:stop].t().reshape(-1)
            total += F.cross_entropy(logits.reshape(-1, vocab_size), y, reduction="sum").item()
        if used < n_targets:
            state = tuple(s[:, streams - 1:streams].contiguous() for s in state)
            for start in range(used, n_targets, SEQ):
                stop = min(n_targets, start + SEQ)
                logits, state = model(val[start:stop].view(-1, 1), state)
                total += F.cross_entropy(logits.reshape(-1, vocab_size), val[start + 1:stop + 1],
                                         reduction="sum").item()
    model.train()
    return total / n_targets


def one_stream(model, ids, vocab_size: int, chunk: int = 1024) -> float:
    """charrnn evaluate's score: the text as one stream from a zero state, every
    character predicted from all before it. Mean nats per character."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, state, n = 0.0, None, ids.numel() - 1
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            logits, state = model(ids[start:stop].view(-1, 1), state)
            total += F.cross_entropy(logits.reshape(-1, vocab_size), ids[start + 1:stop + 1], reduction="sum").item()
    model.train()
    return total / n


def learning_rate(schedule: str, progress: float) -> float:
    """LR at `progress` (0 to 1) of the budget: cosine to 0, or constant."""
    return LR * 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else LR


def reference(spec) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(SEED)
    chars = sorted(set(CORPUS.read_text(encoding="utf-8").lstrip("\ufeff")))  # charrnn vocab's order
    train_ids, val_ids = split_train(text_ids(CORPUS, chars))
    batches = Batches(train_ids, BATCH, SEQ)
    val = torch.from_numpy(val_ids.astype(np.int64))
    model = char_rnn({"cell": "lstm", "vocab_size": len(chars), "embed": EMBED, "hidden": spec["hidden"],
                      "layers": spec["layers"]})
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    budget, every = spec["budget_s"], spec["eval_every_s"]
    rows, losses = [], []
    step, state, train_s = 0, None, 0.0
    model.train()
    start = perf()
    next_eval = every

    def record(elapsed: float) -> None:
        rows.append({"step": step, "epoch": round(step / batches.steps_per_epoch, 4), "elapsed": round(elapsed, 3),
                     "train_loss": float(np.mean(losses)) if losses else None,
                     "val_loss": validate(model, val, len(chars)), "lr": opt.param_groups[0]["lr"]})
        losses.clear()

    while perf() - start < budget:
        t0 = perf()
        for group in opt.param_groups:
            group["lr"] = learning_rate(spec["schedule"], min(1.0, (t0 - start) / budget))
        k = step % batches.steps_per_epoch
        if k == 0:  # a new epoch starts the streams again from a zero state, as charrnn does
            state = None
        x, y = (torch.from_numpy(a) for a in batches.batch(k))
        loss, state = train_step(model, opt, params, x, y, state)
        losses.append(loss)
        step += 1
        train_s += perf() - t0
        elapsed = perf() - start
        if elapsed >= next_eval:
            record(elapsed)
            next_eval = (math.floor((perf() - start) / every) + 1) * every
    if not rows or rows[-1]["step"] != step:
        record(perf() - start)
    held_out = one_stream(model, val, len(chars)) if spec.get("held_out") else None
    return {"rows": rows, "steps": step, "epochs": step / batches.steps_per_epoch, "held_out": held_out,
            "chars_per_s": step * BATCH * SEQ / train_s if train_s else None, "wall_s": perf() - start,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in params)}


if __name__ == "__main__":
    worker_main({"reference": reference})
