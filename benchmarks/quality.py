"""How good a model a time budget buys: `make bench-quality`, or
python -m benchmarks.quality [--budget 5m] [options].

1. charrnn: `charrnn train data/tinyshakespeare.txt --max-time BUDGET --eval-every 1m`
   with every other flag at its default, in a process of its own (after an
   untimed two-step run with the same flags, so that the timed one loads the
   compiled engine from Numba's cache instead of compiling it). The validation
   loss at each whole minute and at the end comes from the run's metrics.jsonl.
2. then, when torch is importable, the PyTorch reference (benchmarks/quality_worker.py:
   a 2x256 LSTM, Adam 2e-3, clip 5, the same batches of the same first 90%) in
   another process for the same wall time, its learning rate decaying to 0 along a
   cosine over the budget (and with --torch-constant also a run at a constant rate),
   scored in the same way at the same moments.

The runs follow one another, never at the same time, each with the same number of
threads. Validation is the whole last 10% of the corpus, never trained on, in
nats per character; evaluations count as training time for every run. The report
goes to stdout and, with the raw data, to benchmarks/results/<date>-quality.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import CORPUS, REPO
from benchmarks.run import (RESULTS, THREAD_VARS, WorkerError, busy_cores, charrnn_command, git_state, log, machine,
                            run_worker, table, thread_env, timed_command, torch_version, versions)

EVAL_EVERY = 60.0  # seconds: one evaluation per whole minute


def parse_budget(text: str) -> float:
    """'5m', '90s', '1h', '5' (minutes) -> seconds."""
    t = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t) * 60
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (examples: 5m, 90s, 1h)") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero")
    return seconds


def train_command(out: Path, budget_s: float, extra: list[str]) -> list[str]:
    return [*charrnn_command(), "train", str(CORPUS), "--out", str(out), "--max-time", f"{budget_s:g}s",
            "--eval-every", f"{EVAL_EVERY:g}s", "--overwrite", "-q", *extra]


def run_charrnn(workdir: Path, budget_s: float, threads: int, extra: list[str]) -> dict:
    env = thread_env(threads)
    log("charrnn: two untimed steps with the same flags, to load or compile the engine")
    warm = [*charrnn_command(), "train", str(CORPUS), "--out", str(workdir / "warm-up"), "--max-steps", "2",
            "--eval-every", "1", "--overwrite", "-q", *extra]
    timed_command(warm, env)
    out = workdir / "charrnn"
    cmd = train_command(out, budget_s, extra)
    log(f"charrnn: {shlex.join(cmd)}")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WorkerError(f"charrnn train exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    meta = json.loads(subprocess.run([*charrnn_command(), "info", str(out), "--json"], cwd=REPO, env=env,
                                     capture_output=True, text=True, check=True).stdout)
    last = rows[-1]
    timed = [r for r in rows if r.get("chars_per_sec")]
    return {"rows": rows, "steps": last["step"], "epochs": last["epoch"], "wall_s": last["elapsed"],
            "chars_per_s": sum(r["chars_per_sec"] for r in timed) / len(timed) if timed else None,
            "best_val_loss": meta["best_val_loss"], "best_step": meta["best_step"],
            "parameters": meta["parameters"], "config": meta["config"], "train": meta["train"],
            "command": shlex.join(["charrnn", *cmd[len(charrnn_command()):]]),
            "summary_line": proc.stderr.strip().splitlines()[-1]}


def run_torch(budget_s: float, threads: int, schedule: str) -> dict:
    log(f"torch: the reference LSTM, {schedule} learning rate, {budget_s:g} s")
    spec = {"task": "reference", "budget_s": budget_s, "eval_every_s": EVAL_EVERY, "threads": threads,
            "schedule": schedule, "layers": 2, "hidden": 256}
    return run_worker("quality_worker", spec, thread_env(threads), timeout=budget_s + 900)


def at_minutes(rows: list[dict], budget_s: float) -> list[dict | None]:
    """The evaluation at each whole minute of the budget (the first one at or after
    it, and before the next minute), the last being the final evaluation."""
    minutes = int(budget_s // 60)
    picked = []
    for m in range(1, minutes + 1):
        due = [r for r in rows if m * 60 <= r["elapsed"] < (m + 1) * 60 and r.get("val_loss") is not None]
        picked.append(due[0] if due else None)
    return picked


def report(results: dict) -> list[str]:
    """The text report of a results dict (also of a saved one: --show)."""
    meta, runs = results["meta"], results["runs"]
    m, v, g = meta["machine"], meta["versions"], meta["git"]
    budget_s = meta["budget_s"]
    lines = [
        "charrnn quality benchmark: validation loss reached in a wall-clock budget",
        f"  date      {meta['date']}",
        f"  command   {meta['command']}",
        f"  code      charrnn {v['charrnn']}, commit {g['commit']}"
        + (f" + uncommitted changes to {', '.join(g['engine_changes'])}" if g["engine_changes"] else ""),
        f"  machine   {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {' '.join(m['simd'])}; "
        f"{m['memory_gb']} GB RAM; {m['os']}{', virtual machine' if m['virtualised'] else ''}",
        f"  software  Python {v['python']}, numpy {v['numpy']}, numba {v['numba']}, torch {v['torch'] or 'not installed'}",
        f"  threads   {meta['threads']} ({', '.join(THREAD_VARS)}, torch.set_num_threads)",
        f"  data      {meta['corpus']}: first 90% trained on, the whole last 10% scored, nats/char; "
        "evaluations count as training time",
        f"  charrnn   {runs['charrnn']['command']}",
        "  torch     nn.Embedding(V, 64) -> nn.LSTM(64, 256, 2) -> nn.Linear(256, V), B=50, T=50, Adam 2e-3, "
        "clip 5, state carried",
        "",
    ]
    names = [name for name in ("charrnn", "torch-cosine", "torch-constant") if name in runs]
    picked = {name: at_minutes(runs[name]["rows"], budget_s) for name in names}
    body = []
    for i in range(int(budget_s // 60)):
        body.append([f"{i + 1}"] + ["-" if picked[n][i] is None else f"{picked[n][i]['val_loss']:.4f}" for n in names])
    lines.append(table(["minute", *names], body))
    lines.append("")
    final = []
    for n in names:
        r = runs[n]
        last = r["rows"][-1]
        final.append([n, f"{last['val_loss']:.4f}", f"{last['elapsed']:.0f} s", f"{r['steps']:,}",
                      f"{r['epochs']:.2f}", "-" if r.get("chars_per_s") is None else f"{r['chars_per_s']:,.0f}",
                      f"{r['parameters']:,}"])
    lines.append(table(["final", "val loss", "at", "steps", "epochs", "train chars/s", "parameters"], final))
    c = runs["charrnn"]
    model = c["config"]
    t = c["train"]
    lines.append("")
    lines.append(f"  charrnn defaults: {model['cell']} {model['layers']}x{model['hidden']}, embedding {model['embed']}, "
                 f"dropout {model['dropout']:g}, B={t['batch_size']}, T={t['seq_len']}, lr {t['lr']:g} "
                 f"({t.get('lr_schedule', 'constant')}, {t.get('warmup_steps', 0)} warm-up steps, "
                 f"down to {t.get('min_lr_frac', 0):g} x lr); best.safetensors {c['best_val_loss']:.4f} "
                 f"at step {c['best_step']:,}")
    for note in meta.get("notes", []):
        lines.append(f"  note: {note}")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=parse_budget, default=300.0,
                   help="training time per run: 5m (default), 90s, 1h; a bare number is minutes")
    p.add_argument("--minutes", type=float, help="the budget in minutes (the same as --budget Nm)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)),
                   help="threads for every library (default 2, or $BENCH_THREADS)")
    p.add_argument("--no-torch", action="store_true", help="leave the PyTorch reference out even if torch is installed")
    p.add_argument("--torch-constant", action="store_true",
                   help="also train the PyTorch reference at a constant learning rate (one more budget of time)")
    p.add_argument("--charrnn-args", default="",
                   help="extra `charrnn train` flags, e.g. \"--hidden 384\" (the report then is not of the defaults)")
    p.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/<date>-quality.json)")
    p.add_argument("--show", type=Path, metavar="JSON", help="print the report of a saved results file and exit")
    args = p.parse_args(argv)
    if args.minutes is not None:
        if not args.minutes > 0:
            p.error("--minutes must be positive")
        args.budget = args.minutes * 60
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.show:
        print("\n".join(report(json.loads(args.show.read_text()))))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="charrnn-quality-"))
    busy_start = busy_cores()
    torch_ver = None if args.no_torch else torch_version(args.threads)
    now = dt.datetime.now(dt.timezone.utc)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    results = {"meta": {"date": f"{now:%Y-%m-%d %H:%M} UTC", "command": command,
                        "via_make": bool(os.environ.get("MAKELEVEL")), "machine": machine(),
                        "versions": versions(torch_ver), "git": git_state(), "threads": args.threads,
                        "budget_s": args.budget, "eval_every_s": EVAL_EVERY, "corpus": str(CORPUS.relative_to(REPO)),
                        "charrnn_args": args.charrnn_args, "busy_cores_start": busy_start,
                        "load_average_start": os.getloadavg()},
               "runs": {}}
    extra = shlex.split(args.charrnn_args)
    code = 0
    try:
        results["runs"]["charrnn"] = run_charrnn(workdir, args.budget, args.threads, extra)
        if torch_ver:
            for schedule in ["cosine"] + (["constant"] if args.torch_constant else []):
                results["runs"][f"torch-{schedule}"] = run_torch(args.budget, args.threads, schedule)
        elif not args.no_torch:
            log("torch is not importable: the PyTorch reference is left out")
    except (WorkerError, subprocess.SubprocessError) as e:
        results["error"] = str(e)
        log(f"FAILED: {e}")
        code = 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    busy_end = busy_cores()
    notes = []
    if extra:
        notes.append(f"charrnn ran with extra flags {args.charrnn_args!r}: not the defaults")
    if max(busy_start, busy_end) > 0.2:
        notes.append(f"other processes kept {busy_start:.2f} cores busy before the start and {busy_end:.2f} after "
                     "the end: the machine was not idle, so these figures are unreliable")
    results["meta"]["busy_cores_end"] = busy_end
    results["meta"]["notes"] = notes
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    path = args.json or RESULTS / f"{stamp}-quality.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    if "charrnn" in results["runs"]:
        text = report(results)
        print("\n".join(text), flush=True)
        path.with_suffix(".txt").write_text("\n".join(text) + "\n")
    log(f"results: {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
