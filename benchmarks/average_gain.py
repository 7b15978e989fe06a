"""What the weight average gives, paired: python -m benchmarks.average_gain CKPT TEXT [--json].

A checkpoint of a run with a weight average (--ema) holds two models: the average,
under the model's own names (what charrnn validates, saves and samples from), and
the weights themselves (train.raw.*). This scores both on the same text as one
stream (as `charrnn evaluate` does), so the difference is the average's own effect,
free of the run-to-run noise that comparing two runs would add. The quality curve
(benchmarks/curve.py) reports it for every run of its own.
"""

from __future__ import annotations

import argparse
import json
import sys

from charrnn.checkpoint import load_checkpoint
from charrnn.evaluate import load_text, score_ids
from charrnn.network import Network


def scores(ckpt_path, text_path) -> dict:
    """nats/char of the averaged and the raw weights on text_path (raw None without an average)."""
    ckpt = load_checkpoint(ckpt_path)
    ids = load_text(text_path, ckpt.vocab).ids
    per_char = lambda params: score_ids(Network(ckpt.config, params), ids)  # noqa: E731
    nats, count = per_char(ckpt.params)
    raw = per_char(ckpt.raw)[0] / count if ckpt.raw is not None else None
    return {"average": nats / count, "raw": raw, "chars": count}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("text")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    s = scores(args.checkpoint, args.text)
    if args.json:
        print(json.dumps(s))
    elif s["raw"] is None:
        print(f"no weight average in {args.checkpoint}: {s['average']:.4f} nats/char")
    else:
        print(f"average {s['average']:.4f}, raw weights {s['raw']:.4f} nats/char over {s['chars']:,} characters: "
              f"the average gives {s['raw'] - s['average']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
