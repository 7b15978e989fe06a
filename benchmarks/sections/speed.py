"""What the throughput sections (train, sample, evaluate) share: the figures of a
row from its processes' results, the cells of its table row, and its summary line.

Each figure is the median over processes of each process's median; noise is half
the range of those process medians, relative to their median."""

from __future__ import annotations

from statistics import median

from benchmarks.common import Row, fmt, fmt_int, mark, spread, target


def summarise(suite, row: Row, runs: dict, train: bool) -> dict:
    """charrnn's and torch's chars/s, GFLOP/s, peak RSS, their ratio and the noise."""
    c = [r["chars_per_s"] for r in runs["charrnn"]]
    t = [r["chars_per_s"] for r in runs.get("torch", [])]
    s = {"charrnn_chars_per_s": median(c), "charrnn_all": c,
         "charrnn_rss_mb": max(r["peak_rss_mb"] for r in runs["charrnn"]),
         "charrnn_gflops": suite.gflops(row, median(c), train), "noise": spread(c)}
    if t:
        s.update({"torch_chars_per_s": median(t), "torch_all": t,
                  "torch_rss_mb": max(r["peak_rss_mb"] for r in runs["torch"]),
                  "torch_gflops": suite.gflops(row, median(t), train), "ratio": median(c) / median(t)})
        s["noise"] = max(x for x in (spread(c), spread(t), 0.0) if x is not None) if len(c) > 1 else None
    return s


def pct_peak(gflops, peak) -> str:
    """'112.0 (73%)': GFLOP/s and its share of the measured GEMM peak."""
    if gflops is None:
        return "-"
    return f"{gflops:.1f}" + (f" ({100 * gflops / peak:.0f}%)" if peak else "")


def target_cell(kind: str, row: Row, ratio, isa_limit, precision: str = "float32") -> str:
    goal = target(kind, row.key, isa_limit, precision)
    return f"≥{goal:g} {mark(ratio, goal)}" if goal else ""


def rss_cell(s: dict) -> str:
    return f"{s['charrnn_rss_mb']:.0f}/{s['torch_rss_mb']:.0f}" if "torch_rss_mb" in s else f"{s['charrnn_rss_mb']:.0f}"


def noise_cell(s: dict) -> str:
    return "-" if s.get("noise") is None else f"±{100 * s['noise']:.0f}%"


def table_cells(suite, row: Row, s: dict, kind: str) -> list[str]:
    """model, charrnn, torch, ratio, target, charrnn GFLOP/s, torch GFLOP/s, RSS MB c/t, noise."""
    peak = suite.peak_gflops
    return [row.name, fmt_int(s["charrnn_chars_per_s"]), fmt_int(s.get("torch_chars_per_s")), fmt(s.get("ratio")),
            target_cell(kind, row, s.get("ratio"), suite.isa, suite.precision if kind == "train" else "float32"),
            pct_peak(s["charrnn_gflops"], peak),
            pct_peak(s.get("torch_gflops"), peak), rss_cell(s), noise_cell(s)]


def pct(gflops, peak):
    return 100 * gflops / peak if gflops is not None and peak else None


def summary_line(section: str, key: str, s: dict, peak, isa_limit=None, precision: str = "float32") -> dict:
    """The summary.jsonl line of one table row (None values are dropped on writing)."""
    return {"section": section, "model": key,
            "charrnn_chars_per_s": s["charrnn_chars_per_s"], "torch_chars_per_s": s.get("torch_chars_per_s"),
            "ratio": s.get("ratio"), "target": target(section, key, isa_limit, precision),
            "charrnn_gflops": s["charrnn_gflops"], "charrnn_pct_peak": pct(s["charrnn_gflops"], peak),
            "torch_gflops": s.get("torch_gflops"), "torch_pct_peak": pct(s.get("torch_gflops"), peak),
            "charrnn_rss_mb": s["charrnn_rss_mb"], "torch_rss_mb": s.get("torch_rss_mb"),
            "noise_pct": None if s.get("noise") is None else 100 * s["noise"], "processes": len(s["charrnn_all"])}


def summary_lines(results: dict, section: str, extra=lambda entry: {}) -> list[dict]:
    """One line per row of a throughput table; extra(entry) adds the section's own
    columns from the row's raw data ({"runs": ..., "summary": ...}), and a "precision"
    among them holds the row to that precision's target."""
    peak = results.get("peaks", {}).get("gemm_gflops")
    isa_limit = results.get("meta", {}).get("isa_limit")
    lines = []
    for key, entry in results.get(section, {}).items():
        own = extra(entry)
        line = summary_line(section, key, entry["summary"], peak, isa_limit, own.get("precision", "float32"))
        lines.append({**line, **own})
    return lines
