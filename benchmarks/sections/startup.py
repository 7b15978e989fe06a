"""Start-up: the wall time of the venv's charrnn script: `charrnn --help` (and
which heavy modules it imports), and `charrnn sample --length 200` with an empty
and with a warm Numba cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
from statistics import median

from benchmarks.common import REPO, STARTUP_TARGETS, charrnn_command, fmt_s, log, mark, timed_command
from benchmarks.suite import STARTUP_ROW

# Run in a process of its own: which heavy modules `charrnn --help` imports.
HELP_IMPORTS = ("import sys\nsys.argv = ['charrnn', '--help']\nfrom charrnn.cli import main\n"
                "import contextlib, io\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                "    try:\n        main()\n    except SystemExit:\n        pass\n"
                "print(' '.join(m for m in ('numba', 'llvmlite', 'numpy', 'torch') if m in sys.modules))")


def help_times(suite, env) -> tuple[list[float], list[str]]:
    log("startup: charrnn --help")
    times = [timed_command([*charrnn_command(), "--help"], env)[0] for _ in range(suite.args.help_runs + 1)][1:]
    r = subprocess.run([sys.executable, "-c", HELP_IMPORTS], cwd=REPO, env=env, capture_output=True, text=True)
    return times, r.stdout.strip().split() if r.returncode == 0 else ["(probe failed)"]


def sample_times(suite) -> tuple[tuple, list[tuple]]:
    """(wall, RSS, status) of a sample with an empty cache, then of each warm one."""
    cmd = [*charrnn_command(), "sample", suite.prep["checkpoints"][STARTUP_ROW.key], "--length", "200",
           "--seed", "0"]
    shutil.rmtree(suite.cache_dir("startup"), ignore_errors=True)
    env = suite.env("charrnn", "startup")
    log("startup: charrnn sample, empty cache")
    cold = timed_command(cmd, env)
    warm = []
    for i in range(suite.args.sample_runs):
        log(f"startup: charrnn sample, warm cache {i + 1}/{suite.args.sample_runs}")
        warm.append(timed_command(cmd, env))
    return cold, warm


def run(suite) -> None:
    helps, imported = help_times(suite, suite.env("charrnn"))
    cold, warm = sample_times(suite)
    res = {"help_s": median(helps), "help_all": helps, "help_imports": imported,
           "sample_cold_s": cold[0], "sample_cold_rss_mb": cold[1],
           "sample_warm_s": median([w[0] for w in warm]), "sample_warm_all": [w[0] for w in warm],
           "sample_warm_rss_mb": max(w[1] for w in warm)}
    suite.results["startup"] = res
    help_target, warm_target = STARTUP_TARGETS["help_s"], STARTUP_TARGETS["sample_warm_s"]
    suite.out("Start-up (wall time of the venv's charrnn script)")
    suite.out(f"  charrnn --help: {fmt_s(res['help_s'])} (median of {len(helps)}), target < {help_target} s "
              f"{mark(res['help_s'], help_target, False)}; heavy modules imported: {', '.join(imported) or 'none'}")
    suite.out(f"  charrnn sample {STARTUP_ROW.name} --length 200: empty Numba cache {fmt_s(res['sample_cold_s'])}; "
              f"warm cache {fmt_s(res['sample_warm_s'])} (median of {len(warm)}), target < {warm_target} s "
              f"{mark(res['sample_warm_s'], warm_target, False)}; peak RSS {res['sample_warm_rss_mb']:.0f} MB")
    suite.out()


def summary(results: dict) -> list[dict]:
    r = results.get("startup")
    if not r:
        return []
    return [{"section": "startup", "model": STARTUP_ROW.key, "help_s": r["help_s"],
             "heavy_imports": r["help_imports"] or None, "sample_cold_s": r["sample_cold_s"],
             "sample_warm_s": r["sample_warm_s"], "sample_warm_rss_mb": r["sample_warm_rss_mb"]}]
