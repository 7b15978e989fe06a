"""Sampling, batch 1: charrnn.sample.generate against a PyTorch loop of
one-character steps, at PyTorch's faster of two settings, and against the floor
set by reading every weight once per character at the measured bandwidth."""

from __future__ import annotations

from statistics import median

from benchmarks.common import fmt, fmt_int, spread, table
from benchmarks.sections import speed

HEADERS = ["model", "charrnn", "torch default", "torch 1T no-oneDNN", "ratio", "target", "charrnn GFLOP/s", "MB/char",
           "µs/char", "floor µs", "x floor", "RSS MB c/t", "noise"]
FOOTNOTE = ("  charrnn: charrnn.sample.generate; torch: a loop of one-character steps, softmax + multinomial; "
            "ratio: charrnn / the faster PyTorch setting (its default, or oneDNN off + 1 thread); MB/char: "
            "float32 weights a character must read; floor µs: MB/char at the read bandwidth measured for an "
            "array of that size on 1 and N threads; x floor: charrnn's µs/char / the floor (1.0 = at the floor)")


def with_torch_settings(s: dict, runs: dict, repeats: int) -> None:
    """The ratio against the faster of PyTorch's default and oneDNN off on 1 thread."""
    fast = median([r["chars_per_s"] for r in runs["torch_fast"]])
    s["torch_default_chars_per_s"] = s["torch_chars_per_s"]
    s["torch_fast_chars_per_s"] = fast
    s["torch_best"] = "default" if s["torch_chars_per_s"] >= fast else "oneDNN off, 1 thread"
    s["ratio"] = s["charrnn_chars_per_s"] / max(s["torch_chars_per_s"], fast)
    s["torch_rss_mb"] = max(r["peak_rss_mb"] for name in ("torch", "torch_fast") for r in runs[name])
    spreads = [spread([r["chars_per_s"] for r in v]) for v in runs.values()]
    s["noise"] = max(x for x in spreads + [0.0] if x is not None) if repeats > 1 else None


def measure(suite, row) -> dict:
    a = suite.args
    base = {"task": "sample", "chars": a.sample_chars, "reps": a.sample_reps, "budget_s": a.sample_budget,
            "checkpoint": suite.prep["checkpoints"][row.key], "threads": suite.threads}
    jobs = [("charrnn", "charrnn_worker", base)]
    if suite.torch:
        jobs += [("torch", "torch_worker", base),
                 ("torch_fast", "torch_worker", {**base, "threads": 1, "mkldnn": False})]
    runs = suite.run_alternating("sample", row, jobs)
    s = speed.summarise(suite, row, runs, train=False)
    if suite.torch:
        with_torch_settings(s, runs, a.repeats)
    wb = suite.weight_bytes(row)
    s["weight_bytes_per_char"] = wb
    s["charrnn_us_per_char"] = 1e6 / s["charrnn_chars_per_s"]
    bandwidth = suite.results.get("peaks", {}).get("bandwidth_gbs", {}).get(row.key, {})
    s["floor_us_per_char"] = {k: wb / (g * 1e9) * 1e6 for k, g in bandwidth.items()}
    return {"runs": runs, "summary": s}


def table_cells(suite, row, s: dict) -> list[str]:
    floors, us = s["floor_us_per_char"], s["charrnn_us_per_char"]
    floor_text = " / ".join(f"{floors[k]:.1f}" for k in sorted(floors)) if floors else "-"
    times_floor = " / ".join(f"{us / floors[k]:.1f}x" for k in sorted(floors)) if floors else "-"
    return [row.name, fmt_int(s["charrnn_chars_per_s"]), fmt_int(s.get("torch_default_chars_per_s")),
            fmt_int(s.get("torch_fast_chars_per_s")), fmt(s.get("ratio")),
            speed.target_cell("sample", row, s.get("ratio"), suite.isa),
            speed.pct_peak(s["charrnn_gflops"], suite.peak_gflops), f"{s['weight_bytes_per_char'] / 1e6:.2f}",
            f"{us:.1f}", floor_text, times_floor, speed.rss_cell(s), speed.noise_cell(s)]


def run(suite) -> None:
    a = suite.args
    res = {row.key: measure(suite, row) for row in suite.rows}
    suite.results["sample"] = res
    lines = [table_cells(suite, row, res[row.key]["summary"]) for row in suite.rows]
    counts = sorted({k for entry in res.values() for k in entry["summary"]["floor_us_per_char"]})
    threads = f" ({'/'.join(str(k) for k in counts)}T)" if counts else ""
    headers = [h + threads if h in ("floor µs", "x floor") else h for h in HEADERS]
    suite.out(f"Sampling, batch 1, temperature 1: {a.sample_chars} characters, median of up to {a.sample_reps} "
              f"per process (fewer past {a.sample_budget:g} s), {a.repeats} process(es) per setting")
    suite.out(table(headers, lines))
    suite.out(FOOTNOTE)
    suite.out()


def summary(results: dict) -> list[dict]:
    def extra(entry):
        s = entry["summary"]
        floors = {str(k): v for k, v in s["floor_us_per_char"].items()}
        return {"torch_chars_per_s": (max(s["torch_default_chars_per_s"], s["torch_fast_chars_per_s"])
                                      if "torch_fast_chars_per_s" in s else None),
                "torch_default_chars_per_s": s.get("torch_default_chars_per_s"),
                "torch_fast_chars_per_s": s.get("torch_fast_chars_per_s"), "torch_best": s.get("torch_best"),
                "torch_gflops": None, "torch_pct_peak": None,  # the table gives charrnn's only
                "weights_mb": s["weight_bytes_per_char"] / 1e6, "us_per_char": s["charrnn_us_per_char"],
                "floor_us": floors or None,
                "x_floor": {k: s["charrnn_us_per_char"] / v for k, v in floors.items()} or None}

    return speed.summary_lines(results, "sample", extra)
