"""What the orchestrator (run.py) and the workers share: the rows, FLOP and byte
counts, the corpus layout, and how a worker hands back its result.

Imports only the standard library and numpy, so that every worker process loads
exactly the library it measures and nothing else.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "tinyshakespeare.txt"

# The shapes of the issue: B streams of T characters, embedding 64. VAL_FRAC is
# charrnn train's default; the evaluation text is the tail of that split.
BATCH, SEQ, EMBED, VAL_FRAC = 50, 50, 64, 0.1
LR, GRAD_CLIP = 2e-3, 5.0
SEED = 0
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
RESULT_PREFIX = "BENCH-RESULT "


@dataclass(frozen=True)
class Row:
    cell: str
    layers: int
    hidden: int

    @property
    def name(self) -> str:
        return f"{self.cell} {self.layers}x{self.hidden}"

    @property
    def key(self) -> str:
        return f"{self.cell}-{self.layers}x{self.hidden}"

    def to_dict(self) -> dict:
        return {"cell": self.cell, "layers": self.layers, "hidden": self.hidden}


ROWS = [Row("lstm", 1, 128), Row("lstm", 2, 256), Row("lstm", 2, 512), Row("lstm", 3, 512), Row("gru", 2, 256)]

# The targets: charrnn / PyTorch throughput ratios (2 threads, one run).
TARGETS = {
    "train": {"lstm-2x256": 1.2, "lstm-2x512": 1.2, "gru-2x256": 1.0, "lstm-1x128": 1.0},
    "sample": {"lstm-2x256": 8.0},  # against PyTorch's faster setting
    "evaluate": {},  # filled in below: every row
}
TARGETS["evaluate"] = {row.key: 1.0 for row in ROWS}
STARTUP_TARGETS = {"help_s": 0.5, "sample_warm_s": 2.0}


def parse_row(text: str) -> Row:
    """'lstm-2x256' (or 'lstm:2x256', 'lstm 2x256') -> Row."""
    t = text.strip().lower().replace(":", "-").replace(" ", "-")
    try:
        cell, shape = t.split("-")
        layers, hidden = (int(v) for v in shape.split("x"))
    except ValueError:
        raise ValueError(f"bad row {text!r}: write CELL-LAYERSxHIDDEN, e.g. lstm-2x256") from None
    if cell not in GATES or layers < 1 or hidden < 1:
        raise ValueError(f"bad row {text!r}: cell must be one of {', '.join(GATES)}")
    return Row(cell, layers, hidden)


def forward_flops_per_char(cell: str, layers: int, hidden: int, embed: int, vocab: int) -> int:
    """Multiply-adds x 2 of one character's forward pass: per layer the input and
    recurrent products, 2*G*H*(D + H), and the decoder, 2*H*V. Elementwise work,
    the softmax and the embedding lookup are not counted. (charrnn computes layer
    0's input side as a table lookup, so it does less work than this count; the
    same nominal count is used for both libraries.)"""
    g = GATES[cell]
    total = 0
    for layer in range(layers):
        d = embed if layer == 0 else hidden
        total += 2 * g * hidden * (d + hidden)
    return total + 2 * hidden * vocab


def train_flops_per_char(cell: str, layers: int, hidden: int, embed: int, vocab: int) -> int:
    """Forward plus backward, backward counted as twice the forward."""
    return 3 * forward_flops_per_char(cell, layers, hidden, embed, vocab)


def weight_bytes_per_char(cell: str, layers: int, hidden: int, embed: int, vocab: int, itemsize: int = 4) -> int:
    """The float32 weights one character must read at batch 1: every recurrent
    matrix and bias, the input matrices of the layers above the first, the decoder,
    and one row of layer 0's (V, G*H) input table (embedding @ w_ih.T + bias, which
    can be computed once per set of weights). For lstm 2x256 this is 3.2 MB."""
    g = GATES[cell]
    gh = g * hidden
    floats = layers * (gh * hidden + gh)            # w_hh and the combined biases
    floats += (layers - 1) * gh * hidden            # w_ih of layers >= 1
    floats += gh                                    # one table row for layer 0
    floats += vocab * hidden + vocab                # decoder
    return floats * itemsize


def parameter_count(cell: str, layers: int, hidden: int, embed: int, vocab: int) -> int:
    g = GATES[cell]
    n = vocab * embed + vocab * hidden + vocab
    for layer in range(layers):
        d = embed if layer == 0 else hidden
        n += g * hidden * (d + hidden) + 2 * g * hidden
    return n


def split_train(ids, val_frac: float = VAL_FRAC):
    """charrnn.data.split_train_val: the first (1 - val_frac) for training, the rest
    for validation."""
    n_val = int(round(len(ids) * val_frac))
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:]


class Batches:
    """charrnn.data.Batches' layout (torch-rnn's), for the PyTorch worker: the text
    cut into B contiguous streams read T characters at a time; batch k is
    x = streams[:, kT:(k+1)T].T and y = x shifted by one, both (T, B) int64."""

    def __init__(self, ids, batch_size: int, seq_len: int):
        import numpy as np

        self.seq_len = seq_len
        per_stream = (len(ids) - 1) // batch_size
        self.steps_per_epoch = per_stream // seq_len
        used = batch_size * per_stream
        self._x = ids[:used].reshape(batch_size, per_stream)
        self._y = ids[1:used + 1].reshape(batch_size, per_stream)
        self._np = np

    def batch(self, k: int):
        np = self._np
        cols = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return (np.ascontiguousarray(self._x[:, cols].T, dtype=np.int64),
                np.ascontiguousarray(self._y[:, cols].T, dtype=np.int64))


def text_ids(path, chars: list[str]):
    """The ids (uint8/uint16) of a UTF-8 file's characters in a vocabulary; for
    the PyTorch worker, which does not import charrnn."""
    import numpy as np

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


def median(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return float("nan")
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (10^6 bytes)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb * 1024 / 1e6 if sys.platform != "darwin" else kb / 1e6


def worker_main(tasks: dict) -> None:
    """Run one task in this process: argv[1] is a JSON spec with "task"; the result
    (a JSON object, with the peak RSS added) is the last line of stdout."""
    spec = json.loads(sys.argv[1])
    result = tasks[spec["task"]](spec)
    result["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def isfinite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def time_generation(generate, spec: dict) -> tuple[float, list[float]]:
    """Time generate(n, seed), which returns n characters: once with
    spec["warmup_chars"] (its time is the first result), then spec["reps"] times with
    spec["chars"], stopping early once more than spec["budget_s"] seconds are spent
    (the median of fewer runs). Returns (first call seconds, seconds of each rep)."""
    import time

    t0 = time.perf_counter()
    generate(spec.get("warmup_chars", 50), SEED)
    first_s = time.perf_counter() - t0
    times = []
    for rep in range(spec["reps"]):
        if times and sum(times) > spec.get("budget_s", float("inf")):
            break
        t0 = time.perf_counter()
        out = generate(spec["chars"], SEED + 1 + rep)
        times.append(time.perf_counter() - t0)
        assert len(out) == spec["chars"], (len(out), spec["chars"])
    return first_s, times
