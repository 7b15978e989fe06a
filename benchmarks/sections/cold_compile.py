"""Cold compile: per cell, a charrnn process with an empty Numba cache times its
first training step (in the suite's precision), sample and evaluation. It runs
before every section that starts charrnn, chosen or not: it fills the cache their
processes load, so that they measure warm starts."""

from __future__ import annotations

import shutil

from benchmarks.common import Row, fmt_s, log, run_worker, table

HEADERS = ["cell", "import", "1st train step", "1st sample", "1st evaluate", "signatures", "total"]
PHASES = ("import_s", "train_first_step_s", "sample_first_call_s", "evaluate_first_call_s")


def cells(suite) -> list[str]:
    """The cells the chosen rows and sections run (start-up and memory: an LSTM)."""
    extra = {"lstm"} if {"startup", "memory"} & set(suite.sections) else set()
    return sorted({row.cell for row in suite.rows} | extra)


def compile_cell(suite, cell: str) -> dict:
    row = next((r for r in suite.rows if r.cell == cell), Row(cell, 2, 256))
    reuse = suite.args.reuse_cache
    if not reuse:
        shutil.rmtree(suite.cache_dir(cell), ignore_errors=True)
    log(f"compile: {cell}, {'reused' if reuse else 'empty'} cache")
    spec = {"task": "compile", "cell": cell, "layers": row.layers, "hidden": row.hidden,
            "workdir": str(suite.workdir), "checkpoint": suite.prep["checkpoints"][row.key],
            "text": suite.prep["eval_path"], "precision": suite.precision}
    return run_worker("charrnn_worker", spec, suite.env("charrnn", cell))


def run(suite) -> None:
    res = {cell: compile_cell(suite, cell) for cell in cells(suite)}
    suite.results["compile"] = res
    if "compile" not in suite.sections:
        return
    if suite.args.reuse_cache:
        suite.out("First calls with the Numba cache of an earlier run (--reuse-cache: not a cold compile)")
    else:
        suite.out("Cold compile: a process with an empty Numba cache (NUMBA_CACHE_DIR), first calls")
    lines = [[cell, *(fmt_s(r[p]) for p in PHASES), str(r["compiled"]), fmt_s(sum(r[p] for p in PHASES))]
             for cell, r in res.items()]
    suite.out(table(HEADERS, lines))
    suite.out()


def summary(results: dict) -> list[dict]:
    if "compile" not in results["meta"]["sections"] or "compile" not in results:
        return []
    cold = not results["meta"].get("reuse_cache", False)
    return [{"section": "compile", "model": cell, "cold": cold, **{p: r[p] for p in PHASES},
             "signatures": r["compiled"], "total_s": sum(r[p] for p in PHASES)}
            for cell, r in results["compile"].items()]
