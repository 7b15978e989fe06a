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
goes to stdout and to benchmarks/results/<date>-quality.txt, and each run's final
figures become one line of benchmarks/results/summary.jsonl; --json PATH also
writes the raw data (which --show prints again).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (CORPUS, REPO, RESULTS, THREAD_VARS, WorkerError, busy_cores, charrnn_command,
                               command_line, cpu_name, file_stamp, git_state, isa_list, log, machine, now_utc, record,
                               run_fields, run_worker, table, thread_env, timed_command, torch_probe, versions,
                               write_json)

EVAL_EVERY = 60.0  # seconds: one evaluation per whole minute
REFERENCE = {"layers": 2, "hidden": 256}  # the PyTorch reference's LSTM


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
            "schedule": schedule, **REFERENCE}
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


def header(meta: dict, charrnn_command: str) -> list[str]:
    m, v, g = meta["machine"], meta["versions"], meta["git"]
    date = meta["date"]  # ISO; written as "2026-11-21 17:10 UTC" before summary.jsonl existed
    changes = f" + uncommitted changes to {', '.join(g['engine_changes'])}" if g["engine_changes"] else ""
    return [
        "charrnn quality benchmark: validation loss reached in a wall-clock budget",
        f"  date      {date[:16].replace('T', ' ') + ' UTC' if 'T' in date else date}",
        f"  command   {meta['command']}",
        f"  code      charrnn {v['charrnn']}, commit {g['commit']}{changes}",
        f"  machine   {cpu_name(m)}, {m['cores']} cores ({m['usable_cores']} usable), {' '.join(isa_list(m))}; "
        f"{m['memory_gb']} GB RAM; {m['os']}{', virtual machine' if m['virtualised'] else ''}",
        f"  software  Python {v['python']}, numpy {v['numpy']}, numba {v['numba']}, "
        f"torch {v['torch'] or 'not installed'}",
        f"  threads   {meta['threads']} ({', '.join(THREAD_VARS)}, torch.set_num_threads)",
        f"  data      {meta['corpus']}: first 90% trained on, the whole last 10% scored, nats/char; "
        "evaluations count as training time",
        f"  charrnn   {charrnn_command}",
        "  torch     nn.Embedding(V, 64) -> nn.LSTM(64, 256, 2) -> nn.Linear(256, V), B=50, T=50, Adam 2e-3, "
        "clip 5, state carried",
        "",
    ]


def run_names(runs: dict) -> list[str]:
    return [name for name in ("charrnn", "torch-cosine", "torch-constant") if name in runs]


def report(results: dict) -> list[str]:
    """The text report of a results dict (also of a saved one: --show)."""
    meta, runs = results["meta"], results["runs"]
    budget_s, names = meta["budget_s"], run_names(runs)
    picked = {name: at_minutes(runs[name]["rows"], budget_s) for name in names}
    body = [[f"{i + 1}"] + ["-" if picked[n][i] is None else f"{picked[n][i]['val_loss']:.4f}" for n in names]
            for i in range(int(budget_s // 60))]
    final = []
    for n in names:
        r, last = runs[n], runs[n]["rows"][-1]
        final.append([n, f"{last['val_loss']:.4f}", f"{last['elapsed']:.0f} s", f"{r['steps']:,}",
                      f"{r['epochs']:.2f}", "-" if r.get("chars_per_s") is None else f"{r['chars_per_s']:,.0f}",
                      f"{r['parameters']:,}"])
    c = runs["charrnn"]
    model, t = c["config"], c["train"]
    return [*header(meta, c["command"]),
            table(["minute", *names], body), "",
            table(["final", "val loss", "at", "steps", "epochs", "train chars/s", "parameters"], final), "",
            f"  charrnn defaults: {model['cell']} {model['layers']}x{model['hidden']}, embedding {model['embed']}, "
            f"dropout {model['dropout']:g}, B={t['batch_size']}, T={t['seq_len']}, lr {t['lr']:g} "
            f"({t.get('lr_schedule', 'constant')}, {t.get('warmup_steps', 0)} warm-up steps, "
            f"down to {t.get('min_lr_frac', 0):g} x lr); best.safetensors {c['best_val_loss']:.4f} "
            f"at step {c['best_step']:,}",
            *(f"  note: {note}" for note in meta.get("notes", []))]


def summary(results: dict, report_name: str | None) -> list[dict]:
    """One summary.jsonl line per run: the final table's row, with the validation
    loss at each whole minute."""
    meta, runs = results["meta"], results["runs"]
    first = run_fields(meta, report_name)
    config = runs["charrnn"]["config"]
    lines = []
    for name in run_names(runs):
        r = runs[name]
        shape = config if name == "charrnn" else {"cell": "lstm", **REFERENCE}
        model = f"{shape['cell']}-{shape['layers']}x{shape['hidden']}"
        lines.append({**first, "section": "quality", "model": model, "run": name, "budget_s": meta["budget_s"],
                      "charrnn_args": (meta.get("charrnn_args") or None) if name == "charrnn" else None,
                      "val_loss": r["rows"][-1]["val_loss"],
                      "val_loss_by_minute": [p and p["val_loss"] for p in at_minutes(r["rows"], meta["budget_s"])],
                      "best_val_loss": r.get("best_val_loss"), "steps": r["steps"], "epochs": r["epochs"],
                      "chars_per_s": r.get("chars_per_s"), "parameters": r["parameters"]})
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
    p.add_argument("--results", type=Path, metavar="DIR", default=RESULTS,
                   help="where the report (<date>-quality.txt) goes and summary.jsonl gets a line per run "
                        f"(default {RESULTS.relative_to(REPO)}/)")
    p.add_argument("--no-results", action="store_true", help="record nothing (the report still goes to stdout)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the raw data there (for --show)")
    p.add_argument("--show", type=Path, metavar="JSON", help="print the report of a --json file and exit")
    args = p.parse_args(argv)
    if args.minutes is not None:
        if not args.minutes > 0:
            p.error("--minutes must be positive")
        args.budget = args.minutes * 60
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def new_meta(args, torch_ver: str | None, busy_start: float) -> dict:
    return {"date": now_utc().isoformat(), "command": command_line(),
            "via_make": bool(os.environ.get("MAKELEVEL")), "machine": machine(), "versions": versions(torch_ver),
            "git": git_state(), "threads": args.threads, "budget_s": args.budget, "eval_every_s": EVAL_EVERY,
            "corpus": str(CORPUS.relative_to(REPO)), "charrnn_args": args.charrnn_args,
            "busy_cores_start": busy_start, "load_average_start": os.getloadavg()}


def measure(args, results: dict, torch_ver: str | None) -> int:
    """charrnn's run, then PyTorch's, into results["runs"]; 1 if one failed."""
    workdir = Path(tempfile.mkdtemp(prefix="charrnn-quality-"))
    try:
        results["runs"]["charrnn"] = run_charrnn(workdir, args.budget, args.threads, shlex.split(args.charrnn_args))
        if torch_ver:
            for schedule in ["cosine"] + (["constant"] if args.torch_constant else []):
                results["runs"][f"torch-{schedule}"] = run_torch(args.budget, args.threads, schedule)
        elif not args.no_torch:
            log("torch is not importable: the PyTorch reference is left out")
    except (WorkerError, subprocess.SubprocessError) as e:
        results["error"] = str(e)
        log(f"FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.show:
        print("\n".join(report(json.loads(args.show.read_text()))))
        return 0
    busy_start = busy_cores()
    probe = None if args.no_torch else torch_probe(thread_env(args.threads))
    torch_ver = probe and probe["version"]
    results = {"meta": new_meta(args, torch_ver, busy_start), "runs": {}}
    code = measure(args, results, torch_ver)
    busy_end = busy_cores()
    notes = []
    if args.charrnn_args:
        notes.append(f"charrnn ran with extra flags {args.charrnn_args!r}: not the defaults")
    if max(busy_start, busy_end) > 0.2:
        notes.append(f"other processes kept {busy_start:.2f} cores busy before the start and {busy_end:.2f} after "
                     "the end: the machine was not idle, so these figures are unreliable")
    results["meta"].update(busy_cores_end=busy_end, notes=notes)
    if "charrnn" in results["runs"]:
        text = report(results)
        print("\n".join(text), flush=True)
        if not args.no_results:
            name = f"{file_stamp()}-quality"
            path = record(args.results, text, summary(results, f"{name}.txt"), name)
            log(f"report: {path}; summary lines appended to {path.with_name('summary.jsonl')}")
    if args.json:
        write_json(args.json, results)
        log(f"raw data: {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
