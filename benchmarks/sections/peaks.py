"""Machine peaks: GEMM GFLOP/s (torch, numpy and charrnn's own tiles: the best of
them, since a BLAS built before a CPU came out may not use it fully), against which
the other tables give their % of peak, and the read bandwidth of a weights-sized
float32 array on 1 and N threads, the floor of batch-1 sampling."""

from __future__ import annotations

import os

from benchmarks.common import log, parse_row, run_worker, weight_bytes_per_char
from benchmarks.suite import STARTUP_ROW


def gemm(suite, library: str) -> dict:
    log(f"peaks: {library} GEMM")
    spec = {"task": "gemm", "library": library, "n": suite.args.gemm_n, "reps": suite.args.gemm_reps,
            "threads": suite.threads}
    return run_worker("peaks_worker", spec, suite.env(library if library in ("torch", "charrnn") else None))


def bandwidth(suite, sizes: dict[str, int]) -> dict:
    """{row key: {threads: GB/s}} for an array the size of that row's weights per
    character, on 1 thread, 2 and the suite's count; and the raw result."""
    counts = sorted({1, suite.threads} | ({2} if (os.cpu_count() or 1) >= 2 else set()))
    log("peaks: read bandwidth")
    spec = {"task": "bandwidth", "sizes": sorted(set(sizes.values())), "thread_counts": counts,
            "runs": suite.args.bandwidth_runs, "seconds": suite.args.bandwidth_seconds}
    r = run_worker("peaks_worker", spec, suite.env(None, "probe"))
    by_row = {key: {int(k): v["gbytes_per_s"] for k, v in r["by_bytes"][str(nbytes)].items()}
              for key, nbytes in sizes.items()}
    return {"bandwidth": r, "bandwidth_gbs": by_row}


def run(suite) -> None:
    suite.out("Machine peaks")
    gemms = [gemm(suite, lib) for lib in (["torch"] if suite.torch else []) + ["numpy", "charrnn"]]
    best = max(gemms, key=lambda r: r["gflops"])
    n = suite.args.gemm_n
    suite.out(f"  GEMM {n}x{n}x{n} float32, {suite.threads} thread{'s' if suite.threads > 1 else ''}: "
              + ", ".join(f"{r['library']} {r['gflops']:.1f} GFLOP/s" for r in gemms)
              + f"; peak = {best['gflops']:.1f} GFLOP/s")
    rows = [STARTUP_ROW] + [r for r in suite.rows if r != STARTUP_ROW]
    sizes = {row.key: suite.weight_bytes(row) for row in rows}
    res = {"gemm": gemms, "gemm_gflops": best["gflops"], **bandwidth(suite, sizes)}
    for row in rows:
        gbs = res["bandwidth_gbs"][row.key]
        suite.out(f"  read bandwidth, {sizes[row.key] / 1e6:.2f} MB float32 array ({row.name}'s weights per "
                  "character) summed over and over: "
                  + ", ".join(f"{k} thread{'s' if k > 1 else ''} {v:.1f} GB/s" for k, v in gbs.items()))
    suite.out()
    suite.results["peaks"] = res


def summary(results: dict) -> list[dict]:
    peaks = results.get("peaks")
    if not peaks:
        return []
    lines = [{"section": "peaks", "gemm_n": results["meta"]["settings"]["gemm_n"],
              "gemm_gflops": {r["library"]: r["gflops"] for r in peaks["gemm"]}, "peak_gflops": peaks["gemm_gflops"]}]
    vocab = results["prepared"]["vocab_size"]
    for key, gbs in peaks["bandwidth_gbs"].items():
        lines.append({"section": "peaks", "model": key,
                      "weights_mb": weight_bytes_per_char(parse_row(key), vocab) / 1e6,
                      "read_gbs": {str(k): v for k, v in gbs.items()}})
    return lines
