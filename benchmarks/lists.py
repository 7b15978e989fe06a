"""Line mode against stream mode on a list, and what line mode's samples are:
python -m benchmarks.lists [--corpus data/last-names.txt] [--budget 2m] [options].

1. The list's lines are split, with a fixed seed, into 90% for training and 10% held
   out; both files are shuffled (so that neither mode can lean on the list's sorted
   order: in a sorted list the next name shares the previous one's first letters).
2. The same model (--model, default LSTM 1x256) is trained on the training lines for
   the same wall time, once with --lines and once as one stream of text, one run after
   the other, each after an untimed two-step run that fills Numba's cache.
3. `charrnn evaluate` scores the held-out lines with each model in its own mode: line
   mode each line from a zero state, its end included; stream mode the held-out file
   as one stream (each character, newlines included, from all before it).
4. The line-mode model draws --samples lines at temperatures 0.8 and 1.0; each is a
   training line, one of its validation lines (its own random 10% of the training
   file) or new, by the checkpoint's line hashes.

The report goes to stdout and benchmarks/results/<date>-lists.txt, and its figures
to benchmarks/results/summary.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (REPO, RESULTS, charrnn_command, command_line, cpu_name, file_stamp, git_state, isa_list,
                               log, machine, now_utc, record, run_fields)
from benchmarks.quality import parse_budget

SPLIT_SEED = 1234


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return proc


def split(corpus: Path, work: Path) -> tuple[Path, Path, int, int]:
    lines = [x for x in corpus.read_text(encoding="utf-8").split("\n") if x]
    rng = random.Random(SPLIT_SEED)
    rng.shuffle(lines)
    held = len(lines) // 10
    train, test = work / "train.txt", work / "held_out.txt"
    train.write_text("\n".join(lines[held:]) + "\n", encoding="utf-8")
    test.write_text("\n".join(lines[:held]) + "\n", encoding="utf-8")
    return train, test, len(lines) - held, held


def train(train_file: Path, out: Path, budget: float, model: list[str], lines: bool) -> None:
    mode = ["--lines"] if lines else []
    common = [*charrnn_command(), "train", str(train_file), *model, *mode, "--overwrite", "-q"]
    run([*common, "--out", str(out / "warm"), "--max-steps", "2"])  # compile outside the budget
    run([*common, "--out", str(out), "--max-time", f"{budget:g}s", "--eval-every", f"{max(10.0, budget / 5):g}s"])


def evaluate(ckpt: Path, text: Path) -> dict:
    return json.loads(run([*charrnn_command(), "evaluate", str(ckpt), str(text), "--json"]).stdout)


def sources(ckpt: Path, n: int, temperature: float) -> dict:
    proc = run([*charrnn_command(), "sample", str(ckpt), "--num-samples", str(n), "--seed", "1", "-t",
                str(temperature), "--length", "64", "--json"])
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    return {where: sum(r["source"] == where for r in rows) / len(rows) for where in ("train", "val", "new")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--corpus", type=Path, default=REPO / "data" / "last-names.txt", help="the list (one item a line)")
    p.add_argument("--budget", type=parse_budget, default=120.0, help="training time per mode (default 2m)")
    p.add_argument("--model", default="--layers 1 --hidden 256", help="charrnn train flags of the model")
    p.add_argument("--samples", type=int, default=1000, help="lines drawn per temperature (default 1000)")
    args = p.parse_args(argv)
    model = args.model.split()
    with tempfile.TemporaryDirectory(prefix="charrnn-lists-") as d:
        work = Path(d)
        train_file, test_file, n_train, n_test = split(args.corpus, work)
        results = {}
        for lines in (True, False):
            mode = "lines" if lines else "stream"
            log(f"{mode}: training {args.budget:g}s")
            train(train_file, work / mode, args.budget, model, lines)
            results[mode] = evaluate(work / mode / "best.safetensors", test_file)
        shares = {t: sources(work / "lines" / "best.safetensors", args.samples, t) for t in (0.8, 1.0)}
    m = machine()
    meta = {"date": now_utc().isoformat(), "machine": m, "git": git_state(), "threads": None}
    out = [f"charrnn lists benchmark, {meta['date']}", f"  command   {command_line()}",
           f"  machine   {cpu_name(m)}, {m['cores']} cores, {' '.join(isa_list(m))}",
           f"  code      commit {meta['git']['commit']}",
           f"  corpus    {args.corpus.name}: {n_train:,} training and {n_test:,} held-out lines (seed {SPLIT_SEED}), "
           f"both shuffled", f"  model     {args.model}, {args.budget:g}s of training per mode", "",
           "Held-out lines, nats/char (± standard error), by `charrnn evaluate` in each model's mode:"]
    for mode, r in results.items():
        out.append(f"  {mode:<7} {r['nats_per_char']:.4f} ± {r['nats_per_char_stderr']:.4f} over {r['chars']:,} "
                   f"characters")
    out += ["", f"Line mode's samples ({args.samples} per temperature, seed 1): share that are"]
    for t, share in shares.items():
        out.append(f"  temperature {t}: {share['train']:.1%} training lines, {share['val']:.1%} validation lines, "
                   f"{share['new']:.1%} new")
    print("\n".join(out))
    name = f"{file_stamp()}-lists"
    base = run_fields(meta, f"{name}.txt")
    rows = [{**base, "section": "lists", "corpus": args.corpus.name, "mode": mode, "model": args.model,
             "budget_s": args.budget, "nats_per_char": r["nats_per_char"],
             "nats_per_char_stderr": r["nats_per_char_stderr"]} for mode, r in results.items()]
    rows += [{**base, "section": "lists-samples", "corpus": args.corpus.name, "temperature": t,
              "samples": args.samples, **{f"share_{k}": v for k, v in share.items()}} for t, share in shares.items()]
    record(RESULTS, out, rows, name)


if __name__ == "__main__":
    sys.exit(main())
