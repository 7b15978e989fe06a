"""One PyTorch measurement per process: python -m benchmarks.torch_worker SPEC_JSON.

The model is the README's: nn.Embedding(V, 64) -> nn.LSTM/GRU(64, H, L) ->
nn.Linear(H, V), loaded from the same checkpoint the charrnn worker uses, so both
start from the same weights and their losses can be compared. Never imports
charrnn (nor Numba). Threads: the *_NUM_THREADS variables the orchestrator sets,
and torch.set_num_threads(spec["threads"]); with --isa, ATEN_CPU_CAPABILITY and
ONEDNN_MAX_CPU_ISA limit the kernels (the capability in use is reported).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import median

import numpy as np

from benchmarks.common import BATCH, CORPUS, GRAD_CLIP, LR, SEED, SEQ, VAL_FRAC, time_generation, worker_main

perf = time.perf_counter


# ----- charrnn's data layout, rebuilt without charrnn --------------------------------

def split_train(ids, val_frac: float = VAL_FRAC):
    """charrnn.data.split_train_val: the first (1 - val_frac) for training, the rest
    for validation."""
    n_val = int(round(len(ids) * val_frac))
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


class Batches:
    """charrnn.data.Batches' layout (torch-rnn's): the text cut into B contiguous
    streams read T characters at a time; batch k is x = streams[:, kT:(k+1)T].T and
    y = x shifted by one, both (T, B) int64."""

    def __init__(self, ids, batch_size: int, seq_len: int):
        self.seq_len = seq_len
        per_stream = (len(ids) - 1) // batch_size
        self.steps_per_epoch = per_stream // seq_len
        used = batch_size * per_stream
        self._x = ids[:used].reshape(batch_size, per_stream)
        self._y = ids[1:used + 1].reshape(batch_size, per_stream)

    def batch(self, k: int):
        cols = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return (np.ascontiguousarray(self._x[:, cols].T, dtype=np.int64),
                np.ascontiguousarray(self._y[:, cols].T, dtype=np.int64))


def text_ids(path, chars: list[str]):
    """The ids (uint8/uint16) of a UTF-8 file's characters in a vocabulary."""
    text = Path(path).read_text(encoding="utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = {ord(c): i for i, c in enumerate(chars)}
    lut = np.full(max(max(table), int(cps.max(initial=0))) + 1, -1, np.int64)
    for cp, i in table.items():
        lut[cp] = i
    ids = lut[cps]
    if (ids < 0).any():
        raise ValueError(f"{path} has characters outside the vocabulary")
    return ids.astype(np.uint8 if len(chars) <= 256 else np.uint16)


# ----- the model ------------------------------------------------------------------------


def char_rnn(config: dict):
    """The README's model for a charrnn config: nn.Embedding(V, E) ->
    nn.LSTM/GRU/RNN(E, H, L) -> nn.Linear(H, V), initialised by PyTorch (from its
    global generator)."""
    from torch import nn

    class CharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[config["cell"]]
            self.embedding = nn.Embedding(config["vocab_size"], config["embed"])
            self.rnn = rnn(config["embed"], config["hidden"], num_layers=config["layers"])
            self.decoder = nn.Linear(config["hidden"], config["vocab_size"])

        def forward(self, ids, state=None):  # ids: (T, B)
            out, state = self.rnn(self.embedding(ids), state)
            return self.decoder(out), state

    return CharRNN()


def load_model(spec):
    """Import torch with the spec's settings; the model with the checkpoint's
    weights. Returns (torch, model, the checkpoint's metadata, facts for the result)."""
    t0 = perf()
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    import_s = perf() - t0
    torch.set_num_threads(spec["threads"])
    if not spec.get("mkldnn", True):
        torch.backends.mkldnn.enabled = False
    torch.manual_seed(SEED)
    path = spec["checkpoint"]
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["charrnn"])
    model = char_rnn(meta["config"])
    tensors = load_file(path)
    model.load_state_dict({k: v for k, v in tensors.items() if k.split(".")[0] in ("embedding", "rnn", "decoder")})
    info = {"import_s": import_s, "threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.enabled,
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return torch, model, meta, info


def _detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def train_step(model, opt, params, x, y, state, bf16: bool = False):
    """One optimiser step as charrnn takes it, for both torch workers: forward on
    (T, B) ids x with the carried state, cross-entropy against y, backward,
    clip_grad_norm_ to GRAD_CLIP, Adam. bf16: the forward pass (and so its
    products' backward) under torch.autocast('cpu', dtype=torch.bfloat16), the
    loss in float32. Returns (loss, the state detached)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        logits, state = model(x, state)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    opt.step()
    return loss.item(), _detach(state)


def train(spec) -> dict:
    """Time one training step as charrnn takes it: zero the gradients, forward and
    backward on a (T, B) batch with the carried (detached) state, clip_grad_norm_ 5,
    Adam lr 2e-3 (torch's default implementation). The batch's conversion to a
    tensor is inside the timed step, as charrnn's batch slicing is."""
    torch, model, meta, info = load_model(spec)
    train_ids, _ = split_train(text_ids(CORPUS, meta["vocab"]))
    batches = Batches(train_ids, BATCH, SEQ)
    model.train()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    state = None
    times, losses = [], []
    for k in range(spec["warmup"] + spec["steps"]):
        t0 = perf()
        x, y = (torch.from_numpy(a) for a in batches.batch(k))
        loss, state = train_step(model, opt, params, x, y, state, spec.get("precision") == "bf16")
        losses.append(loss)
        times.append(perf() - t0)
    timed = times[spec["warmup"]:]
    step_s = median(timed)
    return {**info, "first_step_s": times[0], "step_times": timed, "median_step_s": step_s,
            "chars_per_s": BATCH * SEQ / step_s, "losses": losses}


def sample(spec) -> dict:
    """Time batch-1 generation as a PyTorch user writes it: one character per step
    with the state carried, softmax and torch.multinomial, the id read back each
    step (a sampler has to, to print it or to stop), under inference_mode."""
    torch, model, meta, info = load_model(spec)
    model.eval()
    newline = meta["vocab"].index("\n")

    def generate(n: int, seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        out = []
        with torch.inference_mode():
            x = torch.full((1, 1), newline, dtype=torch.long)
            state = None
            for _ in range(n):
                logits, state = model(x, state)
                probs = torch.softmax(logits[0, 0], dim=-1)  # temperature 1
                x = torch.multinomial(probs, 1, generator=gen).view(1, 1)
                out.append(int(x))
        return out

    first_s, times = time_generation(generate, spec)
    return {**info, "first_call_s": first_s, "times": times, "chars_per_s": spec["chars"] / median(times)}


def evaluate(spec) -> dict:
    """Time single-stream scoring: batch 1, the file as one stream cut into chunks
    of L characters, state carried, under no_grad, for each L of spec["chunks"]
    (the fastest is reported), over the first spec["limit"] characters (default
    all). Mean cross-entropy as charrnn evaluate computes it."""
    torch, model, meta, info = load_model(spec)
    import torch.nn.functional as F

    model.eval()
    vocab_size = meta["config"]["vocab_size"]
    ids = torch.from_numpy(text_ids(spec["text"], meta["vocab"]).astype(np.int64))
    n = min(ids.numel() - 1, spec.get("limit") or ids.numel())

    def score(count: int, chunk: int) -> float:
        total, state = 0.0, None
        with torch.no_grad():
            for start in range(0, count, chunk):
                stop = min(count, start + chunk)
                x = ids[start:stop].view(-1, 1)
                y = ids[start + 1:stop + 1]
                logits, state = model(x, state)
                total += F.cross_entropy(logits.view(-1, vocab_size), y, reduction="sum").item()
        return total

    per_chunk = {}
    nats = None
    for chunk in spec["chunks"]:
        score(min(n, max(2 * chunk, 2000)), chunk)  # warm-up at this length
        times = []
        for _ in range(spec["reps"]):
            t0 = perf()
            total = score(n, chunk)
            times.append(perf() - t0)
        per_chunk[str(chunk)] = {"times": times, "chars_per_s": n / median(times)}
        nats = total / n
    best = max(per_chunk, key=lambda c: per_chunk[c]["chars_per_s"])
    return {**info, "chars": n, "per_chunk": per_chunk, "best_chunk": int(best),
            "chars_per_s": per_chunk[best]["chars_per_s"], "nats_per_char": nats}


if __name__ == "__main__":
    worker_main({"train": train, "sample": sample, "evaluate": evaluate})
