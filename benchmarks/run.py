"""charrnn's benchmark suite: `make bench`, or `python -m benchmarks [options]`.

Every measurement runs in a process of its own (benchmarks/*_worker.py), with the
same thread count for every library; charrnn and PyTorch processes alternate, and
each figure is the median over processes of each process's median. Sections:

  peaks     GEMM GFLOP/s (torch and/or numpy) and the read bandwidth of a
            weights-sized float32 array on 1 and N threads
  compile   per cell, in a process with an empty Numba cache: the first training
            step, sample and evaluation (this also fills the cache the other
            sections use, so that they measure warm starts)
  train     Trainer.train_step vs the same step in PyTorch, chars/s
  sample    charrnn.sample.generate vs a PyTorch loop, batch 1, chars/s
  evaluate  score_ids(streams=1) vs PyTorch's single-stream forward, chars/s
  serving   charrnn serve under 1, 4, 16 and 64 streaming clients against batch-1
            `charrnn sample` (python -m benchmarks.serving, its own LSTM 2x256)
  startup   `charrnn --help`, and `charrnn sample --length 200` cold and warm
  memory    peak RSS of `charrnn train` on a generated ~500 MB corpus

The report goes to stdout and to benchmarks/results/<date>.txt, and each row of
its tables becomes one line of benchmarks/results/summary.jsonl (a --quick run
records nothing unless given --results). --json PATH also writes the raw data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (ISA_LEVELS, RESULTS, ROWS, WorkerError, busy_cores, file_stamp, log, parse_row, record,
                               torch_probe, write_json)
from benchmarks.sections import SECTIONS, summary_lines
from benchmarks.sections.header import write_header
from benchmarks.sections.prepare import prepare
from benchmarks.suite import Suite

# Full run and --quick (smoke test) settings; each can be overridden by a flag.
FULL = dict(repeats=3, warmup=3, steps=25,
            sample_chars=2000, sample_reps=3, sample_budget=8.0,
            eval_chars=20000, eval_reps=1, eval_chunks="64,256,1024,4096", eval_calibrate_chars=10000,
            big_mb=500, help_runs=7, sample_runs=5,
            gemm_n=2048, gemm_reps=5, bandwidth_seconds=0.2, bandwidth_runs=5)
QUICK = dict(repeats=1, warmup=1, steps=3,
             sample_chars=300, sample_reps=1, sample_budget=2.0,
             eval_chars=3000, eval_reps=1, eval_chunks="256,1024", eval_calibrate_chars=3000,
             big_mb=20, help_runs=2, sample_runs=1,
             gemm_n=1024, gemm_reps=2, bandwidth_seconds=0.05, bandwidth_runs=1)
HELP = {"repeats": "processes per library and row", "warmup": "untimed training steps per process",
        "steps": "timed training steps per process", "sample_chars": "characters per timed sample",
        "sample_reps": "timed samples per process", "sample_budget": "seconds after which a process stops sampling",
        "eval_chars": "characters of the validation split to evaluate (0: all)",
        "eval_reps": "timed evaluations per process", "eval_chunks": "PyTorch's chunk lengths to try",
        "eval_calibrate_chars": "characters over which PyTorch's chunk length is chosen",
        "big_mb": "size of the memory section's corpus", "help_runs": "timed `charrnn --help` runs",
        "sample_runs": "warm `charrnn sample` runs", "gemm_n": "N of the peak's N x N x N product",
        "gemm_reps": "products timed for the peak", "bandwidth_seconds": "seconds per bandwidth timing",
        "bandwidth_runs": "bandwidth timings (the best counts)"}


# ----- options ------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)),
                   help="threads for every library (default 2, or $BENCH_THREADS)")
    p.add_argument("--rows", default=os.environ.get("BENCH_ROWS"),
                   help="comma-separated models, e.g. lstm-2x256,gru-2x256 (default: the five of the issue, "
                        "or $BENCH_ROWS)")
    p.add_argument("--only", help=f"comma-separated sections to run, of {', '.join(SECTIONS)}")
    p.add_argument("--skip", help="comma-separated sections to leave out")
    p.add_argument("--quick", action="store_true", help="smoke test: few steps, one process each, a 20 MB corpus; "
                                                        "records nothing unless --results is given")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    p.add_argument("--isa", choices=ISA_LEVELS,
                   help="limit every library's vector ISA: charrnn's processes get CHARRNN_ISA=LEVEL, PyTorch's "
                        "ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA (avx512: avx512, AVX512_CORE; avx2: avx2, AVX2; "
                        "portable: default, SSE41). Default: no limit, each library's own choice (these variables "
                        "are removed from the workers' environment)")
    p.add_argument("--precision", choices=("float32", "bf16"), default="float32",
                   help="training section: charrnn's precision setting, and PyTorch under "
                        "torch.autocast('cpu', dtype=torch.bfloat16) for bf16 (default float32 for both)")
    for name, default in FULL.items():
        kind = str if isinstance(default, str) else float if isinstance(default, float) else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"{HELP[name]} (default {default}; --quick {QUICK[name]})")
    p.add_argument("--workdir", type=Path, help="where checkpoints, caches and the big corpus go (default: a "
                                                "temporary directory, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--reuse-cache", action="store_true",
                   help="with --workdir: keep the Numba caches an earlier run left there instead of measuring a "
                        "cold compile (saves minutes when iterating)")
    p.add_argument("--results", type=Path, metavar="DIR",
                   help=f"where the report (<date>.txt) goes and summary.jsonl gets a line per table row "
                        f"(default {RESULTS.relative_to(RESULTS.parent.parent)}/; with --quick: nowhere)")
    p.add_argument("--no-results", action="store_true", help="record nothing (the report still goes to stdout)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the raw data of every process there")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Fill in the settings --quick or the full run gives, and refuse bad values."""
    base = QUICK if args.quick else FULL
    for name, default in base.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.settings = {name: getattr(args, name) for name in base}
    try:
        args.rows = [parse_row(r) for r in args.rows.split(",")] if args.rows else list(ROWS)
    except ValueError as e:
        p.error(str(e))
    only = args.only.split(",") if args.only else list(SECTIONS)
    skip = args.skip.split(",") if args.skip else []
    for name in only + skip:
        if name not in SECTIONS:
            p.error(f"unknown section {name!r}: choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in only and s not in skip]
    if args.reuse_cache and args.workdir is None:
        p.error("--reuse-cache needs --workdir (the directory of an earlier run)")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step loads the kernels)")
    if args.no_results and args.results:
        p.error("--no-results and --results contradict each other")
    args.record_to = None if args.no_results else args.results or (None if args.quick else RESULTS)


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    return args


# ----- the run ------------------------------------------------------------------------

def closing_notes(suite: Suite, busy_start: float) -> None:
    """What makes this run's figures doubtful: a busy machine, or compilation
    inside a measured process."""
    busy_end = busy_cores()
    suite.results["meta"]["busy_cores_end"] = busy_end
    notes = []
    if max(busy_start, busy_end) > 0.2:
        notes.append(f"other processes kept {busy_start:.2f} cores busy before the start and {busy_end:.2f} "
                     "after the end: the machine was not idle, so these numbers are unreliable (both libraries' "
                     "threads wait for each other, so a taken core costs them far more than its share)")
    if suite.recompiled:
        notes.append("these charrnn processes compiled kernels although the cache was filled before them "
                     "(did charrnn/ change during the run?), so their first step and RSS include compilation: "
                     + ", ".join(suite.recompiled))
    suite.results["meta"]["notes"] = notes
    if notes:
        suite.out("Notes")
        for note in notes:
            suite.out(f"  - {note}")


def run(suite: Suite) -> None:
    """The header, then each chosen section in order; a section that fails is
    reported and the others still run."""
    busy_start = busy_cores()
    suite.torch = None if suite.args.no_torch else torch_probe(suite.env("torch"))
    log(f"preparing checkpoints and texts in {suite.workdir}")
    suite.prep = suite.results["prepared"] = prepare(suite.workdir, suite.rows, suite.args.eval_chars)
    write_header(suite, busy_start)
    if not suite.torch and not suite.args.no_torch:
        suite.out("torch is not importable: PyTorch columns are left out\n")
    # The cold compile fills the cache every later charrnn process loads.
    needs_compile = set(suite.sections) - {"peaks"}
    for name, section in SECTIONS.items():
        if name in suite.sections or (name == "compile" and needs_compile):
            try:
                section.run(suite)
            except (WorkerError, subprocess.SubprocessError) as e:
                suite.out(f"{name}: FAILED\n{e}\n")
                suite.results.setdefault("errors", {})[name] = str(e)
    closing_notes(suite, busy_start)


def save(suite: Suite, args) -> None:
    """Record what the run measured, even when it was interrupted or failed."""
    if args.record_to is not None and suite.report:
        name = file_stamp() + ("-quick" if args.quick else "")
        path = record(args.record_to, suite.report, summary_lines(suite.results, f"{name}.txt"), name)
        log(f"report: {path}; summary lines appended to {path.with_name('summary.jsonl')}")
    elif args.quick:
        log("--quick: nothing recorded (give --results DIR to keep the report)")
    if args.json:
        write_json(args.json, suite.results)
        log(f"raw data: {args.json}")


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="charrnn-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    suite = Suite(args, workdir)
    try:
        run(suite)
    finally:
        save(suite, args)
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            log(f"working directory kept: {workdir}")
    return 1 if suite.results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
