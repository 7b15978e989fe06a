"""What every benchmark script shares: the models and shapes measured, their FLOP
and byte counts, how a measurement process is started and hands back its result,
the description of the machine, and how results are recorded.

Imports only the standard library at module level (numpy and charrnn inside the
functions that need them), so that a worker process loads exactly the library it
measures and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "tinyshakespeare.txt"
RESULTS = REPO / "benchmarks" / "results"
SUMMARY_NAME = "summary.jsonl"

# The shapes of the issue: B streams of T characters, embedding 64. VAL_FRAC is
# charrnn train's default; the evaluation text is the tail of that split.
BATCH, SEQ, EMBED, VAL_FRAC = 50, 50, 64, 0.1
LR, GRAD_CLIP = 2e-3, 5.0
SEED = 0
RESULT_PREFIX = "BENCH-RESULT "
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ----- the models ---------------------------------------------------------------------

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


ROWS = [Row("lstm", 1, 128), Row("lstm", 2, 256), Row("lstm", 2, 512), Row("lstm", 3, 512), Row("gru", 2, 256)]

# The targets: charrnn / PyTorch throughput ratios (2 threads, one run).
# The project's targets (issue 16): at the machine's best ISA against PyTorch's
# default, and with --isa avx2 against PyTorch limited to AVX2.
TARGETS = {
    "train": {"lstm-1x128": 1.1, "lstm-2x256": 1.3, "lstm-2x512": 1.2, "lstm-3x512": 1.2, "gru-2x256": 1.1},
    "sample": {row.key: 10.0 for row in ROWS},  # against PyTorch's faster setting
    "evaluate": {row.key: 1.1 for row in ROWS},
}
AVX2_TARGETS = {"train": {"lstm-2x256": 1.2, "lstm-2x512": 1.2}}
BF16_TARGETS = {"train": {"lstm-2x256": 1.0}}  # --precision bf16 against PyTorch's bfloat16 autocast


def target(section: str, key: str, isa_limit: str | None, precision: str = "float32") -> float | None:
    """A table row's target ratio under an ISA limit (None: no limit) and a precision, if it has one."""
    if precision == "bf16":
        return BF16_TARGETS.get(section, {}).get(key) if isa_limit in (None, "avx512") else None
    if isa_limit is None or isa_limit == "avx512":
        return TARGETS.get(section, {}).get(key)
    return AVX2_TARGETS.get(section, {}).get(key) if isa_limit == "avx2" else None
STARTUP_TARGETS = {"help_s": 0.5, "sample_warm_s": 2.0}


def gates(cell: str) -> int:
    """Gate blocks of a cell's weight matrices, from charrnn's one definition (the
    PyTorch workers never call this: they must not import charrnn)."""
    from charrnn.config import GATES

    return GATES[cell]


def parse_row(text: str) -> Row:
    """'lstm-2x256' (or 'lstm:2x256', 'lstm 2x256') -> Row."""
    from charrnn.config import GATES

    t = text.strip().lower().replace(":", "-").replace(" ", "-")
    try:
        cell, shape = t.split("-")
        layers, hidden = (int(v) for v in shape.split("x"))
    except ValueError:
        raise ValueError(f"bad row {text!r}: write CELL-LAYERSxHIDDEN, e.g. lstm-2x256") from None
    if cell not in GATES or layers < 1 or hidden < 1:
        raise ValueError(f"bad row {text!r}: cell must be one of {', '.join(GATES)}")
    return Row(cell, layers, hidden)


def forward_flops_per_char(row: Row, vocab: int, embed: int = EMBED) -> int:
    """Multiply-adds x 2 of one character's forward pass: per layer the input and
    recurrent products, 2*G*H*(D + H), and the decoder, 2*H*V. Elementwise work,
    the softmax and the embedding lookup are not counted. (charrnn computes layer
    0's input side as a table lookup, so it does less work than this count; the
    same nominal count is used for both libraries.)"""
    g, h = gates(row.cell), row.hidden
    layers = sum(2 * g * h * ((embed if k == 0 else h) + h) for k in range(row.layers))
    return layers + 2 * h * vocab


def train_flops_per_char(row: Row, vocab: int, embed: int = EMBED) -> int:
    """Forward plus backward, backward counted as twice the forward."""
    return 3 * forward_flops_per_char(row, vocab, embed)


def weight_bytes_per_char(row: Row, vocab: int, itemsize: int = 4) -> int:
    """The float32 weights one character must read at batch 1: every recurrent
    matrix and bias, the input matrices of the layers above the first, the decoder,
    and one row of layer 0's (V, G*H) input table (embedding @ w_ih.T + bias, which
    can be computed once per set of weights). For lstm 2x256 this is 3.2 MB."""
    gh = gates(row.cell) * row.hidden
    floats = row.layers * (gh * row.hidden + gh)      # w_hh and the combined biases
    floats += (row.layers - 1) * gh * row.hidden      # w_ih of layers >= 1
    floats += gh                                      # one table row for layer 0
    floats += vocab * row.hidden + vocab              # decoder
    return floats * itemsize


# ----- processes ----------------------------------------------------------------------

class WorkerError(RuntimeError):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def charrnn_command() -> list[str]:
    """The venv's charrnn script (what users run), or python -m charrnn without one."""
    script = Path(sys.executable).with_name("charrnn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "charrnn"]


# --isa: how far each library may go. charrnn reads CHARRNN_ISA; PyTorch's ATen
# kernels ATEN_CPU_CAPABILITY and oneDNN's ONEDNN_MAX_CPU_ISA.
ISA_LEVELS = ("avx512", "avx2", "portable")
TORCH_ISA = {"avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
             "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
             "portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}}
ISA_VARS = ("CHARRNN_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def isa_env(library: str | None, isa: str | None) -> dict:
    """The variables that limit `library` ("charrnn" or "torch") to `isa`; none
    for another library or without a limit."""
    if isa is None:
        return {}
    if library == "charrnn":
        return {"CHARRNN_ISA": isa}
    return dict(TORCH_ISA[isa]) if library == "torch" else {}


def thread_env(threads: int, cache_dir: Path | None = None, library: str | None = None,
               isa: str | None = None) -> dict:
    """This environment with every thread count set to `threads`, Numba's cache in
    cache_dir, and the ISA limit of `library`. ISA variables inherited from the
    shell are dropped, so that no limit applies that the report does not state."""
    env = {k: v for k, v in os.environ.items() if k not in ISA_VARS}
    env.update({var: str(threads) for var in THREAD_VARS})
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env.update(isa_env(library, isa))
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


def worker_main(tasks: dict) -> None:
    """Run one task in this process: argv[1] is a JSON spec with "task"; the result
    (a JSON object, with the peak RSS added) is the last line of stdout."""
    spec = json.loads(sys.argv[1])
    result = tasks[spec["task"]](spec)
    result["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


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


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (10^6 bytes)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb * 1024 / 1e6 if sys.platform != "darwin" else kb / 1e6


# ----- timing -------------------------------------------------------------------------

def time_generation(generate, spec: dict) -> tuple[float, list[float]]:
    """Time generate(n, seed), which returns n characters: once with
    spec["warmup_chars"] (its time is the first result), then spec["reps"] times with
    spec["chars"], stopping early once more than spec["budget_s"] seconds are spent
    (the median of fewer runs). Returns (first call seconds, seconds of each rep)."""
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


def spread(values) -> float | None:
    """Half the range of values, relative to their median (0.05 = ±5%)."""
    if len(values) < 2:
        return None
    m = median(values)
    return (max(values) - min(values)) / 2 / m if m else None


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


# ----- the machine and the code -------------------------------------------------------

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
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size, shared = ((index / name).read_text().strip()
                                         for name in ("level", "type", "size", "shared_cpu_list"))
        except OSError:
            continue
        if kind == "Instruction":
            continue
        size = size.replace("K", " KiB")
        if size.endswith(" KiB") and int(size.split()[0]) >= 1024 and int(size.split()[0]) % 1024 == 0:
            size = f"{int(size.split()[0]) // 1024} MiB"
        per = "per core" if re.fullmatch(r"\d+", shared) else f"shared by cpus {shared}"
        parts.append(f"L{level}{'d' if kind == 'Data' else ''} {size} {per}")
    return ", ".join(parts)


def vector_isa(flags: set[str]) -> list[str]:
    """The vector extensions that decide which kernels a library can run, as
    /proc/cpuinfo names them (AMX as its amx_* flags)."""
    wanted = ["avx512f", "avx512_bf16"] + sorted(f for f in flags if f.startswith("amx")) + ["avx2", "fma"]
    return [f for f in wanted if f in flags]


def machine() -> dict:
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    arch = _microarchitecture(cpu.get("vendor_id", ""), cpu.get("cpu family", ""), cpu.get("model", ""))
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        mem_kb = 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu.get("model name", platform.processor() or "unknown"),
            "cpu_family": cpu.get("cpu family"), "cpu_model": cpu.get("model"), "microarchitecture": arch,
            "cores": os.cpu_count(), "usable_cores": usable, "isa": vector_isa(flags), "caches": _caches(),
            "mhz": cpu.get("cpu MHz"), "memory_gb": round(mem_kb * 1024 / 1e9, 1),
            "virtualised": "hypervisor" in flags, "os": f"{platform.system()} {platform.release()}"}


def cpu_name(m: dict) -> str:
    """'AMD EPYC (family 25 model 17, Zen 4)': the model name alone often does not
    tell two generations apart."""
    arch = f", {m['microarchitecture']}" if m.get("microarchitecture") else ""
    return f"{m['cpu']} (family {m['cpu_family']} model {m['cpu_model']}{arch})" if m.get("cpu_family") else m["cpu"]


def isa_list(m: dict) -> list[str]:
    """The machine's vector ISA flags; results written before "isa" existed listed
    only AVX512F/AVX2/FMA, upper-case, as "simd"."""
    return m["isa"] if "isa" in m else [f.lower() for f in m.get("simd", [])]


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


def torch_probe(env: dict) -> dict | None:
    """torch's version and the CPU capability its kernels use under env (which
    --isa may limit), or None when torch does not import."""
    code = "import torch; print(torch.__version__); print(torch.backends.cpu.get_cpu_capability())"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        return None
    version, capability = (r.stdout.strip().splitlines() + ["?"])[:2]
    return {"version": version, "capability": capability}


# ----- recording results --------------------------------------------------------------

def command_line() -> str:
    """How this process was started, as a shell would take it."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def file_stamp() -> str:
    """The local date and time a report file is named after: 2026-11-22T003749."""
    return dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")


def run_fields(meta: dict, report_name: str | None) -> dict:
    """What every summary line of one run starts with: when, which code, on what."""
    m, git = meta["machine"], meta["git"]
    fields = {"date": meta["date"], "commit": git["commit"]}
    if git.get("engine_changes"):
        fields["uncommitted"] = True  # charrnn/ differed from the commit (the report lists the files)
    fields["machine"] = {"cpu": cpu_name(m), "isa": isa_list(m), "cores": m["cores"]}
    fields["threads"] = meta["threads"]
    for key in ("isa_limit", "quick"):
        if meta.get(key):
            fields[key] = meta[key]
    if report_name:
        fields["report"] = report_name
    return fields


def compact(row: dict, digits: int = 5) -> dict:
    """row without None values, floats rounded to `digits` significant digits, or
    to whole numbers from 1000 up (the noise between runs is far above that)."""
    def short(v):
        if isinstance(v, float):
            return round(v) if abs(v) >= 1000 else float(f"{v:.{digits}g}")
        if isinstance(v, dict):
            return {k: short(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [short(x) for x in v]
        return v
    return {k: short(v) for k, v in row.items() if v is not None}


def record(directory: Path, report: list[str], rows: list[dict], name: str) -> Path:
    """Write the text report to directory/<name>.txt and append the rows, one JSON
    object a line, to directory/summary.jsonl. Returns the report's path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.txt"
    path.write_text("\n".join(report) + "\n", encoding="utf-8")
    with open(directory / SUMMARY_NAME, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(compact(row), ensure_ascii=False) + "\n")
    return path


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


# ----- report formatting --------------------------------------------------------------

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

    def line(cells):
        return indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers)] + [line(r) for r in rows]).rstrip()
