"""Memory and scale: peak RSS of `charrnn train` on a generated corpus of
--big-mb MB, against 2x the file plus the model's training state."""

from __future__ import annotations

import shlex

from benchmarks.common import CORPUS, EMBED, charrnn_command, fmt_s, log, mark, timed_command
from benchmarks.suite import STARTUP_ROW

VAL_FRAC = "0.0001"  # a validation split this small keeps the run about loading the corpus


def write_big_corpus(path, size: int) -> tuple[int, int]:
    """tinyshakespeare again and again, each copy followed by a line of multi-byte
    characters (2, 3 and 4 bytes in UTF-8), until the file has at least `size`
    bytes. Returns its number of characters and the size of its vocabulary."""
    text = CORPUS.read_text(encoding="utf-8") + "\n— « Ünïcødé » naïve café ☃ 漢字 🎭 —\n"
    unit = text.encode("utf-8")
    copies = -(-size // len(unit))
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(unit)
    return copies * len(text), len(set(text))


def train_cmd(corpus, out) -> list[str]:
    return [*charrnn_command(), "train", str(corpus), "--out", str(out), "--max-steps", "3",
            "--eval-every", "1000", "--val-frac", VAL_FRAC, "-q", "--overwrite"]


def model_mb(vocab_size: int) -> float:
    """Parameters, gradients and Adam's two moments, float32."""
    from charrnn.config import ModelConfig
    from charrnn.model import parameter_count

    cfg = ModelConfig(vocab_size=vocab_size, cell=STARTUP_ROW.cell, layers=STARTUP_ROW.layers,
                      hidden=STARTUP_ROW.hidden, embed=EMBED)
    return 16 * parameter_count(cfg) / 1e6


def measure(suite) -> dict:
    path = suite.workdir / "big" / "corpus.txt"
    path.parent.mkdir(exist_ok=True)
    log(f"memory: writing a {suite.args.big_mb:.0f} MB corpus")
    chars, vocab_size = write_big_corpus(path, int(suite.args.big_mb * 1e6))
    file_bytes = path.stat().st_size
    env = suite.env("charrnn", "lstm")
    runs = suite.workdir / "runs"
    log("memory: baseline on the small corpus (twice: the first may fill the cache)")
    timed_command(train_cmd(CORPUS, runs / "baseline"), env)
    base_wall, base_rss, _ = timed_command(train_cmd(CORPUS, runs / "baseline"), env)
    log(f"memory: charrnn train on {file_bytes / 1e6:.0f} MB")
    wall, rss, _ = timed_command(train_cmd(path, runs / "big"), env)
    if not suite.args.keep:
        path.unlink()
    model = model_mb(vocab_size)
    shown = ["charrnn", *train_cmd("CORPUS", "DIR")[len(charrnn_command()):]]
    return {"file_bytes": file_bytes, "chars": chars, "command": shlex.join(shown),
            "peak_rss_mb": rss, "wall_s": wall, "baseline_rss_mb": base_rss, "baseline_wall_s": base_wall,
            "model_mb": model, "limit_mb": 2 * file_bytes / 1e6 + model, "rss_over_file": rss * 1e6 / file_bytes,
            "corpus_bytes_per_file_byte": (rss - base_rss) * 1e6 / file_bytes}


def run(suite) -> None:
    r = suite.results["memory"] = measure(suite)
    mb, rss = r["file_bytes"] / 1e6, r["peak_rss_mb"]
    suite.out(f"Memory and scale: `charrnn train CORPUS --max-steps 3 --val-frac {VAL_FRAC}` ({STARTUP_ROW.name}) on "
              f"a generated {mb:.0f} MB UTF-8 corpus ({r['chars']:,} characters, some multi-byte)")
    verdict = (mark(r["limit_mb"], rss) if mb >= 100
               else "(not meaningful below 100 MB: the runtime's own memory dominates)")
    suite.out(f"  peak RSS {rss:,.0f} MB = {r['rss_over_file']:.2f}x the file; limit 2x file + model "
              f"(params, grads, Adam moments: {r['model_mb']:.0f} MB) = {r['limit_mb']:,.0f} MB {verdict}; "
              f"wall {fmt_s(r['wall_s'])}")
    suite.out(f"  the same command on {CORPUS.name} ({CORPUS.stat().st_size / 1e6:.1f} MB): peak RSS "
              f"{r['baseline_rss_mb']:,.0f} MB, wall {fmt_s(r['baseline_wall_s'])}; so the corpus cost "
              f"{rss - r['baseline_rss_mb']:,.0f} MB = {r['corpus_bytes_per_file_byte']:.2f} bytes per byte of file")
    suite.out()


def summary(results: dict) -> list[dict]:
    r = results.get("memory")
    if not r:
        return []
    return [{"section": "memory", "model": STARTUP_ROW.key, "file_mb": r["file_bytes"] / 1e6,
             "peak_rss_mb": r["peak_rss_mb"], "rss_over_file": r["rss_over_file"], "limit_mb": r["limit_mb"],
             "wall_s": r["wall_s"], "baseline_rss_mb": r["baseline_rss_mb"],
             "corpus_bytes_per_file_byte": r["corpus_bytes_per_file_byte"]}]
