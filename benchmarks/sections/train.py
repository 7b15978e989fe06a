"""Training: Trainer.train_step against the same optimiser step in PyTorch (same
weights, same batches), chars/s = B*T / median step time."""

from __future__ import annotations

from statistics import median

from benchmarks.common import fmt_s, table
from benchmarks.sections import speed

HEADERS = ["model", "charrnn", "torch", "ratio", "target", "charrnn GFLOP/s", "torch GFLOP/s", "RSS MB c/t", "noise",
           "1st step", "Δloss@1"]
FOOTNOTE = ("  GFLOP/s: 3x the forward FLOPs (2*G*H*(D+H) per layer and character, 2*H*V decoder), % of the GEMM "
            "peak; RSS: peak resident memory of the process; noise: ± half the range of the process medians; "
            "1st step: charrnn's first step with a warm cache (loading, packing); Δloss@1: |charrnn - torch| loss "
            "of step 1 (same weights, same batch)")


def first_step_s(entry: dict) -> float:
    """charrnn's first step with a warm cache (loading, packing), median over processes."""
    return median([r["first_step_s"] for r in entry["runs"]["charrnn"]])


def measure(suite, row) -> dict:
    a = suite.args
    spec = {"task": "train", "cell": row.cell, "layers": row.layers, "hidden": row.hidden, "warmup": a.warmup,
            "steps": a.steps, "workdir": str(suite.workdir), "threads": suite.threads,
            "checkpoint": suite.prep["checkpoints"][row.key], "precision": suite.precision}
    jobs = [("charrnn", "charrnn_worker", spec)] + ([("torch", "torch_worker", spec)] if suite.torch else [])
    runs = suite.run_alternating("train", row, jobs, lambda r: f", first step {r['first_step_s']:.2f} s")
    s = speed.summarise(suite, row, runs, train=True)
    if runs.get("torch"):
        c_loss, t_loss = runs["charrnn"][0]["losses"], runs["torch"][0]["losses"]
        s["loss_diff_first_step"] = abs(c_loss[0] - t_loss[0])
        s["loss_diff_last_step"] = abs(c_loss[-1] - t_loss[-1])
    return {"runs": runs, "summary": s}


def run(suite) -> None:
    a = suite.args
    res = {row.key: measure(suite, row) for row in suite.rows}
    suite.results["train"] = res
    lines = []
    for row in suite.rows:
        s = res[row.key]["summary"]
        diff = s.get("loss_diff_first_step")
        lines.append(speed.table_cells(suite, row, s, "train")
                     + [fmt_s(first_step_s(res[row.key])), "-" if diff is None else f"{diff:.1e}"])
    precision = ("" if suite.precision == "float32" else
                 "; precision bf16: charrnn --precision bf16 against PyTorch under torch.autocast('cpu', "
                 "dtype=torch.bfloat16)")
    suite.out(f"Training: chars/s = B*T / median step time; {a.repeats} process(es) per library, alternating, "
              f"{a.steps} steps each after {a.warmup} warm-up{precision}")
    suite.out(table(HEADERS, lines))
    suite.out(FOOTNOTE)
    suite.out()


def summary(results: dict) -> list[dict]:
    def extra(entry):
        runs = entry["runs"]["charrnn"]
        return {"first_step_s": first_step_s(entry), "loss_diff_step1": entry["summary"].get("loss_diff_first_step"),
                "precision": runs[0].get("precision", "float32") if runs else "float32"}

    return speed.summary_lines(results, "train", extra)
