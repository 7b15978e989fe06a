"""Serving: `python -m benchmarks.serving` (charrnn serve under 1, 4, 16 and 64
streaming clients, against batch-1 `charrnn sample`) in a process of its own, its
table in the report. It trains and serves its own LSTM 2x256 (its rows are not
the suite's), with the suite's threads; --quick runs one short round of 1 and 16
clients."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import REPO, log


def command(suite, json_path) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.serving", "--json", str(json_path), "--rounds", str(suite.args.repeats)]
    if suite.args.quick:
        cmd += ["--chars", "300", "--clients", "1,16", "--no-compare"]
    return cmd


def run(suite) -> None:
    path = suite.workdir / "serving.json"
    log("serving: python -m benchmarks.serving")
    r = subprocess.run(command(suite, path), cwd=REPO, env=suite.env("charrnn"), capture_output=True, text=True,
                       timeout=3600)
    if r.returncode != 0 or not path.exists():
        raise subprocess.SubprocessError(f"benchmarks.serving failed (exit {r.returncode}): "
                                         f"{(r.stderr.strip().splitlines() or ['no output'])[-1]}")
    suite.results["serving"] = json.loads(path.read_text())
    suite.out("Serving: charrnn serve, streaming clients on the same machine (python -m benchmarks.serving)")
    for line in r.stdout.strip().splitlines():
        suite.out(f"  {line}" if line else "")
    suite.out()


def summary(results: dict) -> list[dict]:
    r = results.get("serving")
    if not r:
        return []
    base = {"section": "serving", "model": r["model"], "peak_gflops": r["peak_gflops"]}
    return [{**base, "setup": "charrnn sample, batch 1, 2 threads", "clients": 1, "chars_per_s": r["sample_2_threads"]},
            {**base, "setup": "charrnn sample, batch 1, 1 thread", "clients": 1, "chars_per_s": r["sample_1_thread"]},
            *({**base, "setup": row["setup"], "clients": row["clients"], "chars_per_s": row["rate"],
               "ttfc_median_s": row["ttfc_median"], "ttfc_max_s": row["ttfc_max"], "gflops": row["gflops"]}
              for row in r["rows"])]
