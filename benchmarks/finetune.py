"""Fine-tuning against training from scratch on a small new text:
python -m benchmarks.finetune [--base CKPT] [--text FILE] [--budget 1m] [options].

1. A base model: --base, or one trained here on data/tinyshakespeare.txt for
   --base-budget with no settings given (so charrnn chooses them for that budget).
2. The new text (--text; default /usr/share/common-licenses/GPL-3, English prose of a
   wholly other kind, read from the machine and not shipped) is cut into its first 90%
   to train on and its last 10% held out.
3. For the same wall time (--budget): `charrnn train NEW --init BASE` (fine-tuning:
   the base's weights, a fresh optimiser and schedule, its vocabulary grown by the new
   text's characters) and `charrnn train NEW` from scratch with the base's shape; one
   after the other, each after an untimed two-step run that fills Numba's cache. Both
   keep charrnn's default validation split of the training part (its last 10%).
4. `charrnn evaluate` scores the held-out 10% with each result (best.safetensors),
   skipping characters the scratch run's vocabulary lacks (none, usually), and with
   the base model too, for reference (characters it does not know skipped).

The report goes to stdout and benchmarks/results/<date>-finetune.txt, and its figures
to benchmarks/results/summary.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (CORPUS, REPO, RESULTS, charrnn_command, command_line, cpu_name, file_stamp, git_state,
                               isa_list, log, machine, now_utc, record, run_fields)
from benchmarks.lists import run
from benchmarks.quality import parse_budget


def shape_flags(ckpt: Path) -> list[str]:
    cfg = json.loads(run([*charrnn_command(), "info", str(ckpt), "--json"]).stdout)["config"]
    return ["--cell", cfg["cell"], "--layers", str(cfg["layers"]), "--hidden", str(cfg["hidden"]),
            "--embed", str(cfg["embed"])]


def train(corpus: Path, out: Path, budget: float, flags: list[str]) -> None:
    common = [*charrnn_command(), "train", str(corpus), *flags, "--overwrite", "-q"]
    run([*common, "--out", str(out / "warm"), "--max-steps", "2"])  # compile outside the budget
    run([*common, "--out", str(out), "--max-time", f"{budget:g}s", "--eval-every", f"{max(10.0, budget / 6):g}s"])


def score(ckpt: Path, text: Path) -> dict:
    return json.loads(run([*charrnn_command(), "evaluate", str(ckpt), str(text), "--json", "--skip-unknown"]).stdout)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--base", type=Path, help="the model to fine-tune (default: train one here)")
    p.add_argument("--base-budget", type=parse_budget, default=300.0, help="its training time (default 5m)")
    p.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"), help="the new text")
    p.add_argument("--budget", type=parse_budget, default=60.0, help="training time of each run (default 1m)")
    args = p.parse_args(argv)
    text = args.text.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    with tempfile.TemporaryDirectory(prefix="charrnn-finetune-") as d:
        work = Path(d)
        (work / "new.txt").write_text(text[:cut], encoding="utf-8")
        (work / "held_out.txt").write_text(text[cut:], encoding="utf-8")
        base = args.base
        if base is None:
            log(f"base: {args.base_budget:g}s on {CORPUS.name}")
            train(CORPUS, work / "base", args.base_budget, [])
            base = work / "base" / "best.safetensors"
        log(f"fine-tuning {args.budget:g}s")
        train(work / "new.txt", work / "tuned", args.budget, ["--init", str(base)])
        log(f"from scratch {args.budget:g}s")
        train(work / "new.txt", work / "scratch", args.budget, shape_flags(base))
        results = {name: score(work / name / "best.safetensors", work / "held_out.txt") for name in ("tuned", "scratch")}
        results["base"] = score(base, work / "held_out.txt")
    m = machine()
    meta = {"date": now_utc().isoformat(), "machine": m, "git": git_state(), "threads": None}
    out = [f"charrnn fine-tuning benchmark, {meta['date']}", f"  command   {command_line()}",
           f"  machine   {cpu_name(m)}, {m['cores']} cores, {' '.join(isa_list(m))}",
           f"  code      commit {meta['git']['commit']}",
           f"  new text  {args.text} ({len(text):,} characters): the first 90% to train on, the last 10% held out",
           f"  base      {args.base or f'{args.base_budget:g}s on {CORPUS.name}, settings chosen for the budget'}",
           f"  budget    {args.budget:g}s of training per run", "",
           "Held-out 10%, nats/char (± standard error):"]
    labels = {"tuned": "fine-tuned (--init base)", "scratch": "from scratch, the base's shape",
              "base": "the base model alone (no training on the new text)"}
    for name, r in results.items():
        skipped = f", {r['skipped']:,} unknown characters skipped" if r.get("skipped") else ""
        out.append(f"  {labels[name]:<52} {r['nats_per_char']:.4f} ± {r['nats_per_char_stderr']:.4f}{skipped}")
    print("\n".join(out))
    name = f"{file_stamp()}-finetune"
    base_fields = run_fields(meta, f"{name}.txt")
    rows = [{**base_fields, "section": "finetune", "run": key, "text": str(args.text), "budget_s": args.budget,
             "nats_per_char": r["nats_per_char"], "nats_per_char_stderr": r["nats_per_char_stderr"]}
            for key, r in results.items()]
    record(RESULTS, out, rows, name)


if __name__ == "__main__":
    sys.exit(main())
