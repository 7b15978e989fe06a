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
  startup   `charrnn --help`, and `charrnn sample --length 200` cold and warm
  memory    peak RSS of `charrnn train` on a generated ~500 MB corpus

The report goes to stdout and, with the raw data, to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from benchmarks.common import (BATCH, CORPUS, EMBED, REPO, RESULT_PREFIX, ROWS, SEED, SEQ, STARTUP_TARGETS,
                               TARGETS, VAL_FRAC, Row, forward_flops_per_char, median, parameter_count, parse_row,
                               train_flops_per_char, weight_bytes_per_char)

STARTUP_ROW = Row("lstm", 2, 256)  # the model of the start-up and memory sections
SECTIONS = ("peaks", "compile", "train", "sample", "evaluate", "startup", "memory")
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
RESULTS = REPO / "benchmarks" / "results"

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


def charrnn_command() -> list[str]:
    """The venv's charrnn script (what users run), or python -m charrnn without one."""
    script = Path(sys.executable).with_name("charrnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "charrnn"]


class WorkerError(RuntimeError):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----- processes ------------------------------------------------------------------


def thread_env(threads: int, cache_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    return env


def run_worker(module: str, spec: dict, env: dict, timeout: float = 1800) -> dict:
    """Run benchmarks.<module> on spec in a new process; its result, with the
    process's wall time added."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise WorkerError(f"{module} {spec['task']} failed with status {proc.returncode}:\n{tail}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result["process_wall_s"] = wall
            return result
    raise WorkerError(f"{module} {spec['task']} printed no result:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def timed_command(cmd: list[str], env: dict, stdout=subprocess.DEVNULL) -> tuple[float, float, int]:
    """Run a command to completion: (wall seconds, peak RSS in MB, exit status),
    the RSS from the kernel's accounting of the child (os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.PIPE)
    # Read stderr in full before waiting, so a chatty child never blocks on a full pipe.
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        raise WorkerError(f"{shlex.join(map(str, cmd))} exited with {proc.returncode}:\n"
                          + err.decode(errors="replace")[-2000:])
    return wall, usage.ru_maxrss * 1024 / 1e6, proc.returncode


# ----- the machine --------------------------------------------------------------------


def _cpuinfo() -> dict:
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    return info


def _microarchitecture(vendor: str, family: str, model: str) -> str | None:
    """A name for the common AMD server cores (from the family and model numbers)."""
    if vendor != "AuthenticAMD" or not family.isdigit() or not model.isdigit():
        return None
    f, m = int(family), int(model)
    if f == 23:
        return "Zen 2" if m >= 0x30 else "Zen/Zen+"
    if f == 25 and m <= 0x1F:
        return "Zen 3" if m <= 0x0F else "Zen 4"  # EPYC Milan, Genoa
    if f == 26:
        return "Zen 5"
    return None


def _caches() -> str:
    parts = []
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
            shared = (index / "shared_cpu_list").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        size = size.replace("K", " KiB")
        if size.endswith(" KiB") and int(size.split()[0]) >= 1024 and int(size.split()[0]) % 1024 == 0:
            size = f"{int(size.split()[0]) // 1024} MiB"
        name = f"L{level}{'d' if kind == 'Data' else ''}"
        per = "per core" if re.fullmatch(r"\d+", shared) else f"shared by cpus {shared}"
        parts.append(f"{name} {size} {per}")
    return ", ".join(parts)


def machine() -> dict:
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    simd = [f.upper() for f in ("avx512f", "avx2", "fma") if f in flags]
    arch = _microarchitecture(cpu.get("vendor_id", ""), cpu.get("cpu family", ""), cpu.get("model", ""))
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        mem_kb = 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu.get("model name", platform.processor() or "unknown"),
            "cpu_family": cpu.get("cpu family"), "cpu_model": cpu.get("model"), "microarchitecture": arch,
            "cores": os.cpu_count(), "usable_cores": usable, "simd": simd, "caches": _caches(),
            "mhz": cpu.get("cpu MHz"), "memory_gb": round(mem_kb * 1024 / 1e9, 1),
            "virtualised": "hypervisor" in flags, "os": f"{platform.system()} {platform.release()}"}


def versions(torch_version: str | None) -> dict:
    out = {"python": platform.python_version()}
    for name in ("numpy", "numba", "llvmlite", "charrnn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch_version
    return out


def git_state() -> dict:
    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.rstrip() if r.returncode == 0 else None

    changed = git("status", "--porcelain", "--", "charrnn")  # lines "XY path"
    commit = git("rev-parse", "--short", "HEAD")
    return {"commit": commit.strip() if commit else None,
            "engine_changes": [line[3:] for line in changed.splitlines()] if changed else []}


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores other processes kept busy over the next `seconds` (this
    process sleeps meanwhile), from /proc/stat; 0 when unknown."""
    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return (os.cpu_count() or 1) * (total - (idle1 - idle0)) / total if total else 0.0


def torch_version(threads: int) -> str | None:
    """The version of torch if it imports in this interpreter, else None."""
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], cwd=REPO,
                       env=thread_env(threads), capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


# ----- preparation ----------------------------------------------------------------------


def prepare(workdir: Path, rows: list[Row], eval_chars: int) -> dict:
    """A checkpoint per row (charrnn's initialisation with seed 0, as `charrnn
    train` starts; both libraries load it) and the evaluation text: the first
    eval_chars + 1 characters of the validation split (the last 10%) of the corpus."""
    import numpy as np

    from charrnn.checkpoint import Checkpoint, save_checkpoint
    from charrnn.data import scan_vocab
    from charrnn.model import ModelConfig, ParamBuffer, init_params

    vocab = scan_vocab([CORPUS])
    checkpoints = {}
    (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
    # Also a 2x256 model of every cell: the start-up and memory sections and the
    # cold compile of a cell use it when the rows have none.
    extra = [Row(cell, 2, 256) for cell in ("lstm", "gru")]
    for row in rows + [r for r in extra if r not in rows]:
        cfg = ModelConfig(vocab_size=len(vocab), cell=row.cell, layers=row.layers, hidden=row.hidden, embed=EMBED)
        params = ParamBuffer(cfg, np.float32)
        init_params(params, np.random.default_rng(SEED))
        path = workdir / "checkpoints" / f"{row.key}.safetensors"
        save_checkpoint(path, Checkpoint(cfg, vocab, params, state={"step": 0}))
        checkpoints[row.key] = str(path)
    text = CORPUS.read_text(encoding="utf-8")
    n_val = int(round(len(text) * VAL_FRAC))
    val = text[len(text) - n_val:]
    eval_text = val[:eval_chars + 1] if eval_chars else val
    eval_path = workdir / "eval.txt"
    eval_path.write_text(eval_text, encoding="utf-8")
    return {"vocab_size": len(vocab), "checkpoints": checkpoints, "eval_path": str(eval_path),
            "eval_chars": len(eval_text) - 1, "validation_chars": n_val}


# ----- formatting -------------------------------------------------------------------------


def fmt_int(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def fmt(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def fmt_s(x) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def mark(value, target, higher_is_better=True) -> str:
    if value is None or target is None:
        return ""
    ok = value >= target if higher_is_better else value < target
    return "✓" if ok else "✗"


def table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [indent + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for r in rows:
        lines.append(indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines).rstrip()


def spread(values) -> float | None:
    """Half the range of values, relative to their median (0.05 = ±5%)."""
    if len(values) < 2:
        return None
    m = median(values)
    return (max(values) - min(values)) / 2 / m if m else None


# ----- the suite --------------------------------------------------------------------------


class Suite:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.threads = args.threads
        self.rows: list[Row] = args.rows
        self.sections = args.sections
        self.results: dict = {}
        self.report: list[str] = []
        self.recompiled: list[str] = []  # charrnn processes that had to compile (cache misses)

    # -- helpers

    def cache_dir(self, name: str) -> Path:
        return self.workdir / "numba-cache" / name

    def measure(self, what: str, module: str, spec: dict, cell: str | None) -> dict:
        """run_worker with this suite's environment; notes a charrnn process that compiled."""
        r = run_worker(module, spec, self.env(cell))
        if r.get("compiled"):
            self.recompiled.append(f"{what} ({r['compiled']} signatures)")
        return r

    def env(self, cell: str | None = None) -> dict:
        return thread_env(self.threads, self.cache_dir(cell) if cell else None)

    def out(self, text: str = "") -> None:
        self.report.append(text)
        print(text, flush=True)

    def alternate(self, rep: int, jobs: list):
        """The jobs of one repetition, rotated so that each library goes first in turn."""
        k = rep % len(jobs)
        return jobs[k:] + jobs[:k]

    def run_alternating(self, what: str, row: Row, jobs: list, detail=lambda r: "") -> dict:
        """Each (name, module, spec) job, --repeats times, each repetition in a new
        order (alternate); the results by name. detail(result) adds to the log line."""
        reps = self.args.repeats
        runs = {name: [] for name, _, _ in jobs}
        for rep in range(reps):
            for name, module, spec in self.alternate(rep, jobs):
                log(f"{what} {row.name}: {name} {rep + 1}/{reps}")
                r = self.measure(f"{what} {row.name} {rep + 1}", module, spec, row.cell)
                log(f"  {r['chars_per_s']:,.0f} chars/s{detail(r)}")
                runs[name].append(r)
        return runs

    def flops(self, row: Row, train: bool) -> int:
        f = train_flops_per_char if train else forward_flops_per_char
        return f(row.cell, row.layers, row.hidden, EMBED, self.prep["vocab_size"])

    def gflops(self, row: Row, chars_per_s, train: bool):
        return None if chars_per_s is None else chars_per_s * self.flops(row, train) / 1e9

    def pct_peak(self, gflops) -> str:
        peak = self.results.get("peaks", {}).get("gemm_gflops")
        if gflops is None:
            return "-"
        return f"{gflops:.1f}" + (f" ({100 * gflops / peak:.0f}%)" if peak else "")

    # -- sections

    def header(self, torch_ver):
        a = self.args
        m, v, g = machine(), versions(torch_ver), git_state()
        now = dt.datetime.now(dt.timezone.utc)
        via_make = " (via make bench)" if os.environ.get("MAKELEVEL") else ""
        command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
        self.results["meta"] = {"date": now.isoformat(timespec="seconds"), "command": command,
                                "via_make": bool(via_make), "machine": m, "versions": v, "git": g,
                                "threads": self.threads, "settings": a.settings, "quick": a.quick,
                                "rows": [r.key for r in self.rows], "sections": self.sections,
                                "load_average_start": os.getloadavg(), "busy_cores_start": self.busy_start}
        arch = f", {m['microarchitecture']}" if m["microarchitecture"] else ""
        self.out(f"charrnn benchmark{' (--quick: smoke test, numbers not meaningful)' if a.quick else ''}")
        self.out(f"  date      {now:%Y-%m-%d %H:%M} UTC")
        self.out(f"  command   {command}{via_make}")
        changes = f" + uncommitted changes to {', '.join(g['engine_changes'])}" if g["engine_changes"] else ""
        self.out(f"  code      charrnn {v['charrnn']}, commit {g['commit']}{changes}")
        self.out(f"  machine   {m['cpu']} (family {m['cpu_family']} model {m['cpu_model']}{arch}), "
                 f"{m['cores']} cores ({m['usable_cores']} usable), {' '.join(m['simd'])}; "
                 f"{m['memory_gb']} GB RAM; {m['os']}{', virtual machine' if m['virtualised'] else ''}")
        self.out(f"  caches    {m['caches']}")
        self.out(f"  software  Python {v['python']}, numpy {v['numpy']}, numba {v['numba']} "
                 f"(llvmlite {v['llvmlite']}), torch {v['torch'] or 'not installed'}")
        self.out(f"  threads   {self.threads} for every library ({', '.join(THREAD_VARS)}, torch.set_num_threads)")
        self.out(f"  shapes    B={BATCH}, T={SEQ}, embedding {EMBED}, vocabulary {self.prep['vocab_size']} "
                 f"({CORPUS.relative_to(REPO)}); both libraries start from the same weights "
                 f"(charrnn's initialisation, seed {SEED})")
        self.out(f"  other     {self.busy_start:.2f} cores busy with other processes just before the start "
                 f"(1-minute load average {os.getloadavg()[0]:.2f})")
        self.out()

    def peaks(self):
        self.out("Machine peaks")
        res = {}
        gemms = []
        for lib in (["torch"] if self.torch else []) + ["numpy"]:
            log(f"peaks: {lib} GEMM")
            r = run_worker("probe_worker", {"task": "gemm", "library": lib, "n": self.args.gemm_n,
                                             "reps": self.args.gemm_reps, "threads": self.threads}, self.env())
            gemms.append(r)
        res["gemm"] = gemms
        best = max(gemms, key=lambda r: r["gflops"])
        res["gemm_gflops"] = best["gflops"]
        n = self.args.gemm_n
        self.out(f"  GEMM {n}x{n}x{n} float32, {self.threads} thread{'s' if self.threads > 1 else ''}: "
                 + ", ".join(f"{r['library']} {r['gflops']:.1f} GFLOP/s" for r in gemms)
                 + f"; peak = {best['gflops']:.1f} GFLOP/s")
        counts = sorted({1, self.threads} | ({2} if (os.cpu_count() or 1) >= 2 else set()))
        sizes = {row.key: self.weight_bytes(row) for row in self.rows + [STARTUP_ROW]}
        log("peaks: read bandwidth")
        r = run_worker("probe_worker", {"task": "bandwidth", "sizes": sorted(set(sizes.values())),
                                         "thread_counts": counts, "runs": self.args.bandwidth_runs,
                                         "seconds": self.args.bandwidth_seconds},
                       thread_env(self.threads, self.cache_dir("probe")))
        res["bandwidth"] = r
        # row -> threads -> GB/s, for an array the size of that row's weights per character
        res["bandwidth_gbs"] = {key: {int(k): v["gbytes_per_s"] for k, v in r["by_bytes"][str(nbytes)].items()}
                                for key, nbytes in sizes.items()}
        for row in [STARTUP_ROW] + [r for r in self.rows if r != STARTUP_ROW]:
            gbs = res["bandwidth_gbs"][row.key]
            self.out(f"  read bandwidth, {sizes[row.key] / 1e6:.2f} MB float32 array ({row.name}'s weights per "
                     "character) summed over and over: "
                     + ", ".join(f"{k} thread{'s' if k > 1 else ''} {v:.1f} GB/s" for k, v in gbs.items()))
        self.out()
        self.results["peaks"] = res

    def weight_bytes(self, row: Row) -> int:
        return weight_bytes_per_char(row.cell, row.layers, row.hidden, EMBED, self.prep["vocab_size"])

    def compile(self):
        """Per cell: a process with an empty cache. Always run: it also fills the
        cache every later process of that cell uses."""
        cells = sorted({row.cell for row in self.rows} | ({"lstm"} if {"startup", "memory"} & set(self.sections) else set()))
        res = {}
        lines = []
        for cell in cells:
            row = next((r for r in self.rows if r.cell == cell), Row(cell, 2, 256))
            cache = self.cache_dir(cell)
            if not self.args.reuse_cache:
                shutil.rmtree(cache, ignore_errors=True)
            log(f"compile: {cell}, {'reused' if self.args.reuse_cache else 'empty'} cache")
            r = run_worker("charrnn_worker", {"task": "compile", "cell": cell, "layers": row.layers,
                                               "hidden": row.hidden, "workdir": str(self.workdir),
                                               "checkpoint": self.prep["checkpoints"][row.key],
                                               "text": self.prep["eval_path"]}, self.env(cell))
            res[cell] = r
            lines.append([cell, fmt_s(r["import_s"]), fmt_s(r["train_first_step_s"]), fmt_s(r["sample_first_call_s"]),
                          fmt_s(r["evaluate_first_call_s"]), str(r["compiled"]),
                          fmt_s(r["import_s"] + r["train_first_step_s"] + r["sample_first_call_s"]
                                + r["evaluate_first_call_s"])])
        self.results["compile"] = res
        if "compile" in self.sections:
            if self.args.reuse_cache:
                self.out("First calls with the Numba cache of an earlier run (--reuse-cache: not a cold compile)")
            else:
                self.out("Cold compile: a process with an empty Numba cache (NUMBA_CACHE_DIR), first calls")
            self.out(table(["cell", "import", "1st train step", "1st sample", "1st evaluate", "signatures", "total"],
                           lines))
            self.out()

    def train(self):
        a = self.args
        res = {}
        lines = []
        for row in self.rows:
            spec = {"task": "train", "cell": row.cell, "layers": row.layers, "hidden": row.hidden,
                    "warmup": a.warmup, "steps": a.steps, "workdir": str(self.workdir), "threads": self.threads,
                    "checkpoint": self.prep["checkpoints"][row.key]}
            jobs = [("charrnn", "charrnn_worker", spec)] + ([("torch", "torch_worker", spec)] if self.torch else [])
            runs = self.run_alternating("train", row, jobs, lambda r: f", first step {r['first_step_s']:.2f} s")
            s = self.summarise(row, runs, train=True)
            if runs.get("torch"):
                c_loss, t_loss = runs["charrnn"][0]["losses"], runs["torch"][0]["losses"]
                s["loss_diff_first_step"] = abs(c_loss[0] - t_loss[0])
                s["loss_diff_last_step"] = abs(c_loss[-1] - t_loss[-1])
            res[row.key] = {"runs": runs, "summary": s}
            lines.append(self.summary_line(row, s, "train")
                         + [fmt_s(median([r["first_step_s"] for r in runs["charrnn"]])),
                            f"{s['loss_diff_first_step']:.1e}" if "loss_diff_first_step" in s else "-"])
        self.results["train"] = res
        self.out(f"Training: chars/s = B*T / median step time; {a.repeats} process(es) per library, alternating, "
                 f"{a.steps} steps each after {a.warmup} warm-up")
        self.out(table(["model", "charrnn", "torch", "ratio", "target", "charrnn GFLOP/s", "torch GFLOP/s",
                        "RSS MB c/t", "noise", "1st step", "Δloss@1"], lines))
        self.out("  GFLOP/s: 3x the forward FLOPs (2*G*H*(D+H) per layer and character, 2*H*V decoder), "
                 "% of the GEMM peak; RSS: peak resident memory of the process; noise: ± half the range of the "
                 "process medians; 1st step: charrnn's first step with a warm cache (loading, packing); "
                 "Δloss@1: |charrnn - torch| loss of step 1 (same weights, same batch)")
        self.out()

    def summarise(self, row: Row, runs: dict, train: bool, torch_key: str = "torch") -> dict:
        c = [r["chars_per_s"] for r in runs["charrnn"]]
        t = [r["chars_per_s"] for r in runs.get(torch_key, [])]
        s = {"charrnn_chars_per_s": median(c), "charrnn_all": c,
             "charrnn_rss_mb": max(r["peak_rss_mb"] for r in runs["charrnn"]),
             "charrnn_gflops": self.gflops(row, median(c), train), "noise": spread(c)}
        if t:
            s.update({"torch_chars_per_s": median(t), "torch_all": t,
                      "torch_rss_mb": max(r["peak_rss_mb"] for r in runs[torch_key]),
                      "torch_gflops": self.gflops(row, median(t), train), "ratio": median(c) / median(t)})
            s["noise"] = max(x for x in (spread(c), spread(t), 0.0) if x is not None) if len(c) > 1 else None
        return s

    def summary_line(self, row: Row, s: dict, kind: str) -> list[str]:
        target = TARGETS[kind].get(row.key)
        ratio = s.get("ratio")
        return [row.name, fmt_int(s["charrnn_chars_per_s"]), fmt_int(s.get("torch_chars_per_s")),
                fmt(ratio), (f"≥{target:g} {mark(ratio, target)}" if target else ""),
                self.pct_peak(s["charrnn_gflops"]), self.pct_peak(s.get("torch_gflops")),
                f"{s['charrnn_rss_mb']:.0f}/{s['torch_rss_mb']:.0f}" if "torch_rss_mb" in s
                else f"{s['charrnn_rss_mb']:.0f}",
                "-" if s.get("noise") is None else f"±{100 * s['noise']:.0f}%"]

    def sample(self):
        a = self.args
        res, lines = {}, []
        bandwidth = self.results.get("peaks", {}).get("bandwidth_gbs", {})
        bw = {}
        for row in self.rows:
            base = {"task": "sample", "chars": a.sample_chars, "reps": a.sample_reps, "budget_s": a.sample_budget,
                    "checkpoint": self.prep["checkpoints"][row.key], "threads": self.threads}
            jobs = [("charrnn", "charrnn_worker", base)]
            if self.torch:
                jobs += [("torch", "torch_worker", base),
                         ("torch_fast", "torch_worker", {**base, "threads": 1, "mkldnn": False})]
            runs = self.run_alternating("sample", row, jobs)
            s = self.summarise(row, runs, train=False)
            if self.torch:
                fast = median([r["chars_per_s"] for r in runs["torch_fast"]])
                s["torch_default_chars_per_s"] = s["torch_chars_per_s"]
                s["torch_fast_chars_per_s"] = fast
                s["torch_best"] = "default" if s["torch_chars_per_s"] >= fast else "oneDNN off, 1 thread"
                best = max(s["torch_chars_per_s"], fast)
                s["ratio"] = s["charrnn_chars_per_s"] / best
                s["torch_rss_mb"] = max(r["peak_rss_mb"] for name in ("torch", "torch_fast") for r in runs[name])
                s["noise"] = max(x for x in [spread([r["chars_per_s"] for r in v]) for v in runs.values()] + [0.0]
                                 if x is not None) if a.repeats > 1 else None
            wb = self.weight_bytes(row)
            bw = bandwidth.get(row.key, {})
            s["weight_bytes_per_char"] = wb
            us = 1e6 / s["charrnn_chars_per_s"]
            s["charrnn_us_per_char"] = us
            floors = {k: wb / (g * 1e9) * 1e6 for k, g in bw.items()}
            s["floor_us_per_char"] = floors
            res[row.key] = {"runs": runs, "summary": s}
            target = TARGETS["sample"].get(row.key)
            floor_text = " / ".join(f"{floors[k]:.1f}" for k in sorted(floors)) if floors else "-"
            times_floor = " / ".join(f"{us / floors[k]:.1f}x" for k in sorted(floors)) if floors else "-"
            lines.append([row.name, fmt_int(s["charrnn_chars_per_s"]), fmt_int(s.get("torch_default_chars_per_s")),
                          fmt_int(s.get("torch_fast_chars_per_s")), fmt(s.get("ratio")),
                          f"≥{target:g} {mark(s.get('ratio'), target)}" if target else "",
                          self.pct_peak(s["charrnn_gflops"]), f"{wb / 1e6:.2f}", f"{us:.1f}", floor_text, times_floor,
                          f"{s['charrnn_rss_mb']:.0f}/{s['torch_rss_mb']:.0f}" if "torch_rss_mb" in s
                          else f"{s['charrnn_rss_mb']:.0f}",
                          "-" if s.get("noise") is None else f"±{100 * s['noise']:.0f}%"])
        self.results["sample"] = res
        counts = f" ({'/'.join(str(k) for k in sorted(bw))}T)" if bw else ""
        self.out(f"Sampling, batch 1, temperature 1: {a.sample_chars} characters, median of up to {a.sample_reps} "
                 f"per process (fewer past {a.sample_budget:g} s), {a.repeats} process(es) per setting")
        self.out(table(["model", "charrnn", "torch default", "torch 1T no-oneDNN", "ratio", "target",
                        "charrnn GFLOP/s", "MB/char", "µs/char", f"floor µs{counts}", f"x floor{counts}",
                        "RSS MB c/t", "noise"], lines))
        self.out("  charrnn: charrnn.sample.generate; torch: a loop of one-character steps, softmax + multinomial; "
                 "ratio: charrnn / the faster PyTorch setting (its default, or oneDNN off + 1 thread); MB/char: "
                 "float32 weights a character must read; floor µs: MB/char at the read bandwidth measured for an "
                 "array of that size on 1 and N threads; x floor: charrnn's µs/char / the floor (1.0 = at the floor)")
        self.out()

    def evaluate(self):
        a = self.args
        res, lines = {}, []
        chunks = [int(c) for c in a.eval_chunks.split(",")]
        calibrate = min(self.prep["eval_chars"], a.eval_calibrate_chars)
        for row in self.rows:
            base = {"task": "evaluate", "text": self.prep["eval_path"], "reps": a.eval_reps,
                    "checkpoint": self.prep["checkpoints"][row.key], "threads": self.threads}
            best_chunk, calibration = None, None
            if self.torch:
                # PyTorch's best chunk length, from one pass per length over the first characters.
                log(f"evaluate {row.name}: torch chunk lengths {a.eval_chunks}")
                calibration = self.measure(f"evaluate {row.name} calibration", "torch_worker",
                                           {**base, "reps": 1, "chunks": chunks, "limit": calibrate}, row.cell)
                best_chunk = calibration["best_chunk"]
            jobs = [("charrnn", "charrnn_worker", base)]
            if self.torch:
                jobs.append(("torch", "torch_worker", {**base, "chunks": [best_chunk]}))
            runs = self.run_alternating("evaluate", row, jobs)
            s = self.summarise(row, runs, train=False)
            if runs.get("torch"):
                s["torch_best_chunk"] = best_chunk
                s["torch_per_chunk"] = {c: v["chars_per_s"] for c, v in calibration["per_chunk"].items()}
                s["nats_diff"] = abs(runs["charrnn"][0]["nats_per_char"] - runs["torch"][0]["nats_per_char"])
            res[row.key] = {"runs": runs, "torch_calibration": calibration, "summary": s}
            lines.append(self.summary_line(row, s, "evaluate")
                         + [fmt_int(s.get("torch_best_chunk")),
                            f"{s['nats_diff']:.1e}" if "nats_diff" in s else "-"])
        self.results["evaluate"] = res
        self.out(f"Evaluation, one stream: {self.prep['eval_chars']:,} characters of the validation split, "
                 f"{a.eval_reps} pass(es) per process, {a.repeats} process(es) per library")
        self.out(table(["model", "charrnn", "torch", "ratio", "target", "charrnn GFLOP/s", "torch GFLOP/s",
                        "RSS MB c/t", "noise", "torch L", "Δnats"], lines))
        self.out(f"  charrnn: score_ids(streams=1), as `charrnn evaluate` runs it; torch: batch 1, chunks of L "
                 f"characters, state carried, no_grad, L the fastest of {a.eval_chunks} over the first "
                 f"{calibrate:,} characters; GFLOP/s: forward FLOPs; Δnats: |charrnn - torch| mean loss "
                 "(same weights)")
        self.out()

    def startup(self):
        a = self.args
        env = self.env()
        log("startup: charrnn --help")
        help_times = [timed_command([*charrnn_command(), "--help"], env)[0] for _ in range(a.help_runs + 1)][1:]
        probe = ("import sys\nsys.argv = ['charrnn', '--help']\nfrom charrnn.cli import main\n"
                 "import contextlib, io\n"
                 "with contextlib.redirect_stdout(io.StringIO()):\n"
                 "    try:\n        main()\n    except SystemExit:\n        pass\n"
                 "print(' '.join(m for m in ('numba', 'llvmlite', 'numpy', 'torch') if m in sys.modules))")
        r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
        imported = r.stdout.strip().split() if r.returncode == 0 else ["(probe failed)"]
        row = STARTUP_ROW
        ckpt = self.prep["checkpoints"][row.key]
        cmd = [*charrnn_command(), "sample", ckpt, "--length", "200", "--seed", "0"]
        cache = self.cache_dir("startup")
        shutil.rmtree(cache, ignore_errors=True)
        senv = thread_env(self.threads, cache)
        log("startup: charrnn sample, empty cache")
        cold = timed_command(cmd, senv)
        warm = []
        for i in range(a.sample_runs):
            log(f"startup: charrnn sample, warm cache {i + 1}/{a.sample_runs}")
            warm.append(timed_command(cmd, senv))
        res = {"help_s": median(help_times), "help_all": help_times, "help_imports": imported,
               "sample_cold_s": cold[0], "sample_cold_rss_mb": cold[1],
               "sample_warm_s": median([w[0] for w in warm]), "sample_warm_all": [w[0] for w in warm],
               "sample_warm_rss_mb": max(w[1] for w in warm)}
        self.results["startup"] = res
        self.out("Start-up (wall time of the venv's charrnn script)")
        self.out(f"  charrnn --help: {fmt_s(res['help_s'])} (median of {len(help_times)}), target < "
                 f"{STARTUP_TARGETS['help_s']} s {mark(res['help_s'], STARTUP_TARGETS['help_s'], False)}; "
                 f"heavy modules imported: {', '.join(imported) or 'none'}")
        self.out(f"  charrnn sample {row.name} --length 200: empty Numba cache {fmt_s(res['sample_cold_s'])}; "
                 f"warm cache {fmt_s(res['sample_warm_s'])} (median of {len(warm)}), target < "
                 f"{STARTUP_TARGETS['sample_warm_s']} s {mark(res['sample_warm_s'], STARTUP_TARGETS['sample_warm_s'], False)}; "
                 f"peak RSS {res['sample_warm_rss_mb']:.0f} MB")
        self.out()

    def memory(self):
        a = self.args
        size = int(a.big_mb * 1e6)
        big_dir = self.workdir / "big"
        big_dir.mkdir(exist_ok=True)
        path = big_dir / "corpus.txt"
        log(f"memory: writing a {size / 1e6:.0f} MB corpus")
        chars, vocab_size = write_big_corpus(path, size)
        file_bytes = path.stat().st_size
        env = self.env("lstm")
        val_frac = "0.0001"

        def train_cmd(corpus, out):
            return [*charrnn_command(), "train", str(corpus), "--out", str(out), "--max-steps", "3",
                    "--eval-every", "1000", "--val-frac", val_frac, "-q", "--overwrite"]

        log("memory: baseline on the small corpus (twice: the first may fill the cache)")
        timed_command(train_cmd(CORPUS, self.workdir / "runs" / "baseline"), env)
        base_wall, base_rss, _ = timed_command(train_cmd(CORPUS, self.workdir / "runs" / "baseline"), env)
        log(f"memory: charrnn train on {file_bytes / 1e6:.0f} MB")
        wall, rss, _ = timed_command(train_cmd(path, self.workdir / "runs" / "big"), env)
        n_params = parameter_count(STARTUP_ROW.cell, STARTUP_ROW.layers, STARTUP_ROW.hidden, EMBED, vocab_size)
        model_mb = 16 * n_params / 1e6  # params, gradients and Adam's two moments, float32
        limit = 2 * file_bytes / 1e6 + model_mb
        shown = ["charrnn", *train_cmd("CORPUS", "DIR")[len(charrnn_command()):]]
        res = {"file_bytes": file_bytes, "chars": chars, "command": shlex.join(shown),
               "peak_rss_mb": rss, "wall_s": wall, "baseline_rss_mb": base_rss, "baseline_wall_s": base_wall,
               "model_mb": model_mb, "limit_mb": limit, "rss_over_file": rss * 1e6 / file_bytes,
               "corpus_bytes_per_file_byte": (rss - base_rss) * 1e6 / file_bytes}
        self.results["memory"] = res
        if not a.keep:
            path.unlink()
        self.out(f"Memory and scale: `charrnn train CORPUS --max-steps 3 --val-frac {val_frac}` (lstm 2x256) on a "
                 f"generated {file_bytes / 1e6:.0f} MB UTF-8 corpus ({chars:,} characters, some multi-byte)")
        verdict = mark(limit, rss) if file_bytes >= 100e6 else "(not meaningful below 100 MB: the runtime's own memory dominates)"
        self.out(f"  peak RSS {rss:,.0f} MB = {res['rss_over_file']:.2f}x the file; limit 2x file + model "
                 f"(params, grads, Adam moments: {model_mb:.0f} MB) = {limit:,.0f} MB {verdict}; "
                 f"wall {fmt_s(wall)}")
        self.out(f"  the same command on {CORPUS.name} ({CORPUS.stat().st_size / 1e6:.1f} MB): peak RSS "
                 f"{base_rss:,.0f} MB, wall {fmt_s(base_wall)}; so the corpus cost {rss - base_rss:,.0f} MB = "
                 f"{(rss - base_rss) * 1e6 / file_bytes:.2f} bytes per byte of file")
        self.out()

    # -- everything

    def run(self):
        a = self.args
        self.busy_start = busy_cores()
        self.torch = None if a.no_torch else torch_version(self.threads)
        log(f"preparing checkpoints and texts in {self.workdir}")
        self.prep = prepare(self.workdir, self.rows, a.eval_chars)
        self.results["prepared"] = self.prep
        self.header(self.torch)
        if not self.torch and not a.no_torch:
            self.out("torch is not importable: PyTorch columns are left out\n")
        if "peaks" in self.sections:
            self.peaks()
        if set(self.sections) & {"compile", "train", "sample", "evaluate", "startup", "memory"}:
            self.compile()
        for name in ("train", "sample", "evaluate", "startup", "memory"):
            if name in self.sections:
                try:
                    getattr(self, name)()
                except (WorkerError, subprocess.TimeoutExpired) as e:
                    self.out(f"{name}: FAILED\n{e}\n")
                    self.results.setdefault("errors", {})[name] = str(e)
        busy_end = busy_cores()
        self.results["meta"]["busy_cores_end"] = busy_end
        notes = []
        if max(self.busy_start, busy_end) > 0.2:
            notes.append(f"other processes kept {self.busy_start:.2f} cores busy before the start and {busy_end:.2f} "
                         "after the end: the machine was not idle, so these numbers are unreliable (PyTorch's "
                         "OpenMP threads suffer most when a core is taken)")
        if self.recompiled:
            notes.append("these charrnn processes compiled kernels although the cache was filled before them "
                         "(did charrnn/ change during the run?), so their first step and RSS include compilation: "
                         + ", ".join(self.recompiled))
        self.results["meta"]["notes"] = notes
        if notes:
            self.out("Notes")
            for note in notes:
                self.out(f"  - {note}")


def write_big_corpus(path: Path, size: int) -> tuple[int, int]:
    """tinyshakespeare again and again, each copy followed by a line of multi-byte
    characters (2, 3 and 4 bytes in UTF-8), until the file has at least `size`
    bytes. Returns its number of characters and the size of its vocabulary."""
    text = CORPUS.read_text(encoding="utf-8") + "\n— « Ünïcødé » naïve café ☃ 漢字 🎭 —\n"
    unit = text.encode("utf-8")
    copies = -(-size // len(unit))
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(unit)
    return copies * len(text), len(set(text))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)),
                   help="threads for every library (default 2, or $BENCH_THREADS)")
    p.add_argument("--rows", default=os.environ.get("BENCH_ROWS"),
                   help="comma-separated models, e.g. lstm-2x256,gru-2x256 (default: the five of the issue, "
                        "or $BENCH_ROWS)")
    p.add_argument("--only", help=f"comma-separated sections to run, of {', '.join(SECTIONS)}")
    p.add_argument("--skip", help="comma-separated sections to leave out")
    p.add_argument("--quick", action="store_true", help="smoke test: few steps, one process each, a 20 MB corpus")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    for name, default in FULL.items():
        kind = str if isinstance(default, str) else float if isinstance(default, float) else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"(default {default}; --quick {QUICK[name]})")
    p.add_argument("--workdir", type=Path, help="where checkpoints, caches and the big corpus go (default: a "
                                                "temporary directory, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--reuse-cache", action="store_true",
                   help="with --workdir: keep the Numba caches an earlier run left there instead of measuring a "
                        "cold compile (saves minutes when iterating)")
    p.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/<date>.json)")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = {}
    for name, default in base.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        settings[name] = getattr(args, name)
    args.settings = settings
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
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="charrnn-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    suite = Suite(args, workdir)
    try:
        suite.run()
    finally:
        stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S") + ("-quick" if args.quick else "")
        path = args.json or RESULTS / f"{stamp}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(suite.results, indent=1) + "\n")
        path.with_suffix(".txt").write_text("\n".join(suite.report) + "\n")
        log(f"results: {path} and {path.with_suffix('.txt').name}")
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            log(f"working directory kept: {workdir}")
    return 1 if suite.results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
