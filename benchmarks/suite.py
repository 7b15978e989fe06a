"""What the sections of `python -m benchmarks` share (run.py runs them): the
options, the working directory, the prepared checkpoints, the report and the raw
results so far, and how a measurement process is started and repeated."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import (Row, forward_flops_per_char, log, run_worker, thread_env, train_flops_per_char,
                               weight_bytes_per_char)

STARTUP_ROW = Row("lstm", 2, 256)  # the model of the start-up and memory sections
LIBRARY = {"charrnn_worker": "charrnn", "torch_worker": "torch"}  # whose ISA limit a worker gets


class Suite:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.threads: int = args.threads
        self.rows: list[Row] = args.rows
        self.sections: list[str] = args.sections
        self.isa: str | None = args.isa
        self.precision: str = getattr(args, "precision", "float32")
        self.prep: dict = {}  # checkpoints and texts (sections/prepare.py)
        self.torch: dict | None = None  # torch's version and CPU capability; None without torch
        self.results: dict = {}  # the raw data, by section (--json writes it)
        self.report: list[str] = []  # the text report's lines
        self.recompiled: list[str] = []  # charrnn processes that had to compile (cache misses)

    def out(self, text: str = "") -> None:
        self.report.append(text)
        print(text, flush=True)

    def cache_dir(self, name: str) -> Path:
        """A Numba cache of this run's own; one per ISA limit, so that --reuse-cache
        never runs kernels compiled under another."""
        return self.workdir / "numba-cache" / (f"{name}-{self.isa}" if self.isa else name)

    def env(self, library: str | None = None, cell: str | None = None) -> dict:
        """The environment of a process of `library` (charrnn, torch or None for
        neither): the threads, the ISA limit, and the cell's Numba cache."""
        return thread_env(self.threads, self.cache_dir(cell) if cell else None, library, self.isa)

    def measure(self, what: str, module: str, spec: dict, cell: str | None) -> dict:
        """run_worker in this suite's environment; notes a charrnn process that compiled."""
        r = run_worker(module, spec, self.env(LIBRARY.get(module), cell))
        if r.get("compiled"):
            self.recompiled.append(f"{what} ({r['compiled']} signatures)")
        return r

    def run_alternating(self, what: str, row: Row, jobs: list, detail=lambda r: "") -> dict:
        """Each (name, module, spec) job, --repeats times, each repetition rotated so
        that each library goes first in turn; the results by name. detail(result)
        adds to the log line."""
        reps = self.args.repeats
        runs = {name: [] for name, _, _ in jobs}
        for rep in range(reps):
            k = rep % len(jobs)
            for name, module, spec in jobs[k:] + jobs[:k]:
                log(f"{what} {row.name}: {name} {rep + 1}/{reps}")
                r = self.measure(f"{what} {row.name} {rep + 1}", module, spec, row.cell)
                log(f"  {r['chars_per_s']:,.0f} chars/s{detail(r)}")
                runs[name].append(r)
        return runs

    # -- what the tables compute

    @property
    def vocab_size(self) -> int:
        return self.prep["vocab_size"]

    def gflops(self, row: Row, chars_per_s, train: bool):
        f = train_flops_per_char if train else forward_flops_per_char
        return None if chars_per_s is None else chars_per_s * f(row, self.vocab_size) / 1e9

    def weight_bytes(self, row: Row) -> int:
        return weight_bytes_per_char(row, self.vocab_size)

    @property
    def peak_gflops(self) -> float | None:
        return self.results.get("peaks", {}).get("gemm_gflops")
