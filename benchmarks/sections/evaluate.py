"""Evaluation, one stream: score_ids(streams=1), as `charrnn evaluate` runs it,
against PyTorch's batch-1 forward in chunks of its fastest length."""

from __future__ import annotations

from benchmarks.common import fmt_int, log, table
from benchmarks.sections import speed

HEADERS = ["model", "charrnn", "torch", "ratio", "target", "charrnn GFLOP/s", "torch GFLOP/s", "RSS MB c/t", "noise",
           "torch L", "Δnats"]


def calibrate(suite, row, base: dict, chunks: list[int], limit: int) -> dict:
    """PyTorch's best chunk length, from one pass per length over the first characters."""
    log(f"evaluate {row.name}: torch chunk lengths {suite.args.eval_chunks}")
    return suite.measure(f"evaluate {row.name} calibration", "torch_worker",
                         {**base, "reps": 1, "chunks": chunks, "limit": limit}, row.cell)


def measure(suite, row, chunks: list[int], limit: int) -> dict:
    base = {"task": "evaluate", "text": suite.prep["eval_path"], "reps": suite.args.eval_reps,
            "checkpoint": suite.prep["checkpoints"][row.key], "threads": suite.threads}
    calibration = calibrate(suite, row, base, chunks, limit) if suite.torch else None
    jobs = [("charrnn", "charrnn_worker", base)]
    if suite.torch:
        jobs.append(("torch", "torch_worker", {**base, "chunks": [calibration["best_chunk"]]}))
    runs = suite.run_alternating("evaluate", row, jobs)
    s = speed.summarise(suite, row, runs, train=False)
    if runs.get("torch"):
        s["torch_best_chunk"] = calibration["best_chunk"]
        s["torch_per_chunk"] = {c: v["chars_per_s"] for c, v in calibration["per_chunk"].items()}
        s["nats_diff"] = abs(runs["charrnn"][0]["nats_per_char"] - runs["torch"][0]["nats_per_char"])
    return {"runs": runs, "torch_calibration": calibration, "summary": s}


def run(suite) -> None:
    a = suite.args
    chunks = [int(c) for c in a.eval_chunks.split(",")]
    limit = min(suite.prep["eval_chars"], a.eval_calibrate_chars)
    res = {row.key: measure(suite, row, chunks, limit) for row in suite.rows}
    suite.results["evaluate"] = res
    lines = []
    for row in suite.rows:
        s = res[row.key]["summary"]
        lines.append(speed.table_cells(suite, row, s, "evaluate")
                     + [fmt_int(s.get("torch_best_chunk")), f"{s['nats_diff']:.1e}" if "nats_diff" in s else "-"])
    suite.out(f"Evaluation, one stream: {suite.prep['eval_chars']:,} characters of the validation split, "
              f"{a.eval_reps} pass(es) per process, {a.repeats} process(es) per library")
    suite.out(table(HEADERS, lines))
    suite.out(f"  charrnn: score_ids(streams=1), as `charrnn evaluate` runs it; torch: batch 1, chunks of L "
              f"characters, state carried, no_grad, L the fastest of {a.eval_chunks} over the first "
              f"{limit:,} characters; GFLOP/s: forward FLOPs; Δnats: |charrnn - torch| mean loss "
              "(same weights)")
    suite.out()


def summary(results: dict) -> list[dict]:
    def extra(entry):
        s = entry["summary"]
        return {"torch_chunk": s.get("torch_best_chunk"), "nats_diff": s.get("nats_diff")}

    return speed.summary_lines(results, "evaluate", extra)
