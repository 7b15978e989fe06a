"""charrnn evaluate against PyTorch on the same checkpoints: python -m benchmarks.parity [--steps N].

For each cell (lstm, gru, rnn): `charrnn train data/tinyshakespeare.txt --max-steps N`
with every other flag at its default, then `charrnn evaluate --json` of the run's
best.safetensors on the validation split (the last 10%), and the same checkpoint
loaded into torch.nn modules (benchmarks/torch_worker.py, the README's loading code)
scoring the same text as one stream from a zero state. Prints both losses in
nats/char and their difference. Needs torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import CORPUS, REPO, charrnn_command
from benchmarks.torch_worker import load_model, split_train, text_ids

CELLS = ("lstm", "gru", "rnn")


def charrnn_json(*args: str) -> dict:
    proc = subprocess.run([*charrnn_command(), *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"charrnn {args[0]} failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout)


def torch_loss(checkpoint: Path, threads: int, chunk: int = 4096) -> tuple[float, int]:
    """Mean cross-entropy of the validation split under the checkpoint in PyTorch,
    one stream, state carried from chunk to chunk."""
    torch, model, meta, _ = load_model({"threads": threads, "checkpoint": str(checkpoint)})
    _, val = split_train(text_ids(CORPUS, meta["vocab"]))
    ids = torch.from_numpy(val.astype("int64"))
    total, state = 0.0, None
    with torch.no_grad():
        for start in range(0, len(ids) - 1, chunk):
            stop = min(len(ids) - 1, start + chunk)
            logits, state = model.eval()(ids[start:stop].view(-1, 1), state)
            total += torch.nn.functional.cross_entropy(logits.view(stop - start, -1), ids[start + 1:stop + 1],
                                                       reduction="sum").item()
    return total / (len(ids) - 1), len(ids) - 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="training steps per cell (default 300)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    text = CORPUS.read_text(encoding="utf-8")
    _, val_ids = split_train(list(range(len(text))))  # the split's positions, as charrnn cuts it
    with tempfile.TemporaryDirectory(prefix="charrnn-parity-") as tmp:
        held_out = Path(tmp) / "validation.txt"
        held_out.write_text(text[val_ids[0]:], encoding="utf-8")
        for cell in CELLS:
            out = Path(tmp) / cell
            subprocess.run([*charrnn_command(), "train", str(CORPUS), "--out", str(out), "--cell", cell,
                            "--max-steps", str(args.steps), "-q"], cwd=REPO, check=True, capture_output=True)
            ours = charrnn_json("evaluate", str(out / "best.safetensors"), str(held_out), "--json")
            theirs, chars = torch_loss(out / "best.safetensors", args.threads)
            assert chars == ours["chars"], (chars, ours["chars"])
            print(f"{cell}: charrnn {ours['nats_per_char']:.8f}  torch {theirs:.8f}  "
                  f"|difference| {abs(ours['nats_per_char'] - theirs):.1e} nats/char over {chars:,} characters",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
