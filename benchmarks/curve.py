"""How good a model each time budget buys: `make bench-quality`, or
python -m benchmarks.curve [--budgets 1m,5m,20m] [options].

For each budget, one run after another (never two at once, each with the same
threads):
1. charrnn: `charrnn train data/tinyshakespeare.txt --out DIR --max-time BUDGET`,
   no other flag: the settings are charrnn's choice for the budget (a run given any
   setting would take the fixed defaults instead; --charrnn-args gives settings, to
   measure one against another). Before it, an untimed two-step
   run of the same command fills Numba's cache, so the budget is not spent compiling
   (with settings chosen, two steps choose a model without dropout: a second two-step
   run with --dropout 0.1 compiles the dropout kernels too, and a third with --precision
   bf16 the bfloat16 ones, which a time budget picks where the CPU has AMX or AVX512-BF16).
   Score: `charrnn evaluate DIR/last.safetensors` on the last 10% of the corpus (the
   text the run held out; it trained on the first 90%), one stream from a zero state.
   With a weight average, the run's raw weights are scored too (benchmarks/average_gain.py):
   what the average gave, paired.
2. the PyTorch reference (benchmarks/quality_worker.py: a 2x256 LSTM, B=50, T=50,
   Adam 2e-3 with a cosine decay over the budget, clip 5, the same batches of the
   same first 90%) for the same wall time, scored the same way at the end.
Then, on a second, unlike corpus -- Python's own standard library sources, about
1 MB of them in path order, read from this machine -- charrnn's chosen settings
against its fixed defaults (`--cell lstm`, which turns the choice off) for
--second-budget each, scored on that corpus's last 10% in the same way.

The report goes to stdout and benchmarks/results/<date>-curve.txt, each run's
figures to benchmarks/results/summary.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from benchmarks.common import (CORPUS, REPO, RESULTS, WorkerError, busy_cores, charrnn_command, command_line,
                               cpu_name, file_stamp, git_state, isa_list, log, machine, now_utc, record, run_fields,
                               run_worker, thread_env, torch_probe)
from benchmarks.quality import REFERENCE, parse_budget
from charrnn.config import format_duration

TARGETS = {60.0: 1.55, 300.0: 1.43, 1200.0: 1.39}  # held-out nats/char, the quality issue's
SECOND_SIZE = 1_100_000  # characters of the second corpus, about tiny-shakespeare's


def run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise WorkerError(f"exited with {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return proc


def held_out(corpus: Path, work: Path) -> Path:
    """The corpus's last 10% (as charrnn train's --val-frac 0.1 cuts it), for evaluate."""
    text = corpus.read_text(encoding="utf-8").lstrip("\ufeff")
    path = work / f"{corpus.stem}-last10.txt"
    path.write_text(text[len(text) - int(round(len(text) * 0.1)):], encoding="utf-8")
    return path


def charrnn_run(corpus: Path, out: Path, budget: float, flags: list[str], env: dict, test: Path) -> dict:
    common = [*charrnn_command(), "train", str(corpus), *flags, "--overwrite", "-q"]
    log(f"charrnn {' '.join(flags) or '(settings chosen)'}: {budget:g}s on {corpus.name}")
    warm = [*common, "--out", str(out.with_name(out.name + "-warm")), "--max-steps", "2"]
    run(warm, env)
    if not flags:  # two steps choose a model without dropout, in float32: compile dropout's and bf16's kernels
        run([*warm, "--dropout", "0.1"], env)
        # where bfloat16 is missing this is refused (a time budget then trains in float32): nothing to compile
        subprocess.run([*warm, "--dropout", "0.1", "--precision", "bf16"], cwd=REPO, env=env, capture_output=True)
    train = run([*common, "--out", str(out), "--max-time", f"{budget:g}s"], env)
    score = json.loads(run([*charrnn_command(), "evaluate", str(out / "last.safetensors"), str(test), "--json"],
                           env).stdout)
    info = json.loads(run([*charrnn_command(), "info", str(out), "--json"], env).stdout)
    raw = None
    if info["train"].get("ema"):  # only a run with a weight average has raw weights to score
        raw = json.loads(run([sys.executable, "-m", "benchmarks.average_gain", str(out / "last.safetensors"),
                              str(test), "--json"], env).stdout)["raw"]
    return {"held_out": score["nats_per_char"], "stderr": score["nats_per_char_stderr"], "chosen": info["chosen"],
            "raw_held_out": raw,
            "config": info["config"], "train": info["train"], "steps": info["step"], "epochs": info["epoch"],
            "best_val_loss": info["best_val_loss"], "summary": train.stderr.strip().splitlines()[-1]}


def torch_run(budget: float, threads: int) -> dict:
    log(f"torch reference: {budget:g}s")
    spec = {"task": "reference", "budget_s": budget, "eval_every_s": 60.0, "threads": threads, "schedule": "cosine",
            "held_out": True, **REFERENCE}
    r = run_worker("quality_worker", spec, thread_env(threads), timeout=budget + 900)
    return {"held_out": r["held_out"], "steps": r["steps"], "epochs": r["epochs"]}


def python_sources(work: Path, size: int = SECOND_SIZE) -> Path:
    """About `size` characters of this Python's standard library sources, files in path
    order (tests left out), as one UTF-8 text: code, a corpus unlike Shakespeare."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "test" in path.relative_to(root).parts[0] or "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= size:
            break
    out = work / "python-stdlib.txt"
    out.write_text("".join(parts)[:size], encoding="utf-8")
    return out


def average_gain(run: dict) -> str:
    raw = run.get("raw_held_out")
    return "-" if raw is None else f"{raw - run['held_out']:+.4f}"


def report(meta: dict, curve: dict, second: dict) -> list[str]:
    m = meta["machine"]
    out = ["charrnn quality curve: held-out loss each time budget buys", f"  date      {meta['date']}",
           f"  command   {meta['command']}", f"  code      commit {meta['git']['commit']}",
           f"  machine   {cpu_name(m)}, {m['cores']} cores, {' '.join(isa_list(m))}",
           f"  threads   {meta['threads']} for every library",
           f"  busy      {meta['busy_start']:.2f} cores busy with other processes at the start, "
           f"{meta.get('busy_end', 0):.2f} at the end", "",
           f"tiny-shakespeare: first 90% trained on, last 10% scored (one stream, nats/char):",
           "  budget  charrnn          PyTorch 2x256   ahead by  target   average  steps  epochs  charrnn's chosen settings"]
    for budget, r in curve.items():
        c, t = r["charrnn"], r.get("torch")
        target = TARGETS.get(budget)
        mark = "" if target is None else f"<={target:.2f} {'yes' if c['held_out'] <= target else 'NO'}"
        torch_text = f"{t['held_out']:.4f}" if t else "-"
        ahead = f"{t['held_out'] - c['held_out']:+.4f}" if t else "-"
        out.append(f"  {format_duration(budget):>5}   {c['held_out']:.4f} ±{c['stderr']:.4f}  {torch_text:<14}  {ahead:<8}  "
                   f"{mark:<8} {average_gain(c):<7}  {c['steps']:>5}  {c['epochs']:>6.2f}  "
                   f"{c['chosen'] or 'given: ' + ' '.join(meta.get('flags', []))}")
    out.append("  (average: what validating the weight average gave against the run's own raw weights, "
               "held out, paired; - without one)")
    if second:
        s_chosen, s_fixed = second["chosen"], second["defaults"]
        out += ["", f"second corpus: {second['corpus']} ({second['chars']:,} characters), "
                    f"{format_duration(second['budget'])} each, last 10% scored:",
                f"  settings chosen   {s_chosen['held_out']:.4f} ±{s_chosen['stderr']:.4f}   {s_chosen['chosen']}",
                f"  fixed defaults    {s_fixed['held_out']:.4f} ±{s_fixed['stderr']:.4f}   LSTM 2x256, B=32, lr 4e-3, "
                f"no dropout", f"  chosen - defaults {s_chosen['held_out'] - s_fixed['held_out']:+.4f}"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.curve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="1m,5m,20m", help="comma-separated budgets (default 1m,5m,20m)")
    p.add_argument("--second-budget", type=parse_budget, default=300.0, help="for the second corpus (default 5m)")
    p.add_argument("--no-second", action="store_true", help="leave the second corpus out")
    p.add_argument("--no-torch", action="store_true", help="leave the PyTorch reference out")
    p.add_argument("--charrnn-args", default="", metavar="FLAGS",
                   help="train tiny-shakespeare with these settings instead of charrnn's choice (e.g. \"--layers 1 "
                        "--hidden 512 --dropout 0.1 --lr 4e-3\"), to measure one setting against another")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)))
    p.add_argument("--no-results", action="store_true", help="record nothing (the report still goes to stdout)")
    args = p.parse_args(argv)
    budgets = [parse_budget(b) for b in args.budgets.split(",") if b.strip()]
    flags = shlex.split(args.charrnn_args)
    env = thread_env(args.threads)
    with_torch = not args.no_torch and torch_probe(env) is not None
    meta = {"date": now_utc().isoformat(), "command": command_line(), "machine": machine(), "git": git_state(),
            "threads": args.threads, "busy_start": busy_cores(), "flags": flags}
    curve, second = {}, {}
    with tempfile.TemporaryDirectory(prefix="charrnn-curve-") as d:
        work = Path(d)
        # charrnn measures its speed afresh for its choice (a cache of its own, not the user's)
        env = {**{k: v for k, v in env.items() if k != "NUMBA_CACHE_DIR"}, "XDG_CACHE_HOME": str(work / "cache")}
        test = held_out(CORPUS, work)
        for budget in budgets:
            curve[budget] = {"charrnn": charrnn_run(CORPUS, work / f"run-{budget:g}", budget, flags, env, test)}
            if with_torch:
                curve[budget]["torch"] = torch_run(budget, args.threads)
        if not args.no_second:
            corpus = python_sources(work)
            second_test = held_out(corpus, work)
            second = {"corpus": "Python standard library sources", "chars": len(corpus.read_text()),
                      "budget": args.second_budget,
                      "chosen": charrnn_run(corpus, work / "second-chosen", args.second_budget, [], env, second_test),
                      "defaults": charrnn_run(corpus, work / "second-defaults", args.second_budget, ["--cell", "lstm"],
                                              env, second_test)}
    meta["busy_end"] = busy_cores()
    text = report(meta, curve, second)
    print("\n".join(text))
    if not args.no_results:
        name = f"{file_stamp()}-curve"
        base = run_fields(meta, f"{name}.txt")
        rows = [{**base, "section": "curve", "budget_s": b, "run": who, "held_out": r[who]["held_out"],
                 "chosen": r[who].get("chosen"), "steps": r[who]["steps"], "epochs": r[who]["epochs"]}
                for b, r in curve.items() for who in r]
        rows += [{**base, "section": "curve-second", "budget_s": second["budget"], "run": who,
                  "held_out": second[who]["held_out"], "chosen": second[who].get("chosen")}
                 for who in ("chosen", "defaults") if second]
        record(RESULTS, text, rows, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
