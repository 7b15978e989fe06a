"""What every section measures on: a checkpoint per row and the evaluation text."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import CORPUS, EMBED, SEED, VAL_FRAC, Row


def prepare(workdir: Path, rows: list[Row], eval_chars: int) -> dict:
    """A checkpoint per row (charrnn's initialisation with seed 0, as `charrnn
    train` starts; both libraries load it) and the evaluation text: the first
    eval_chars + 1 characters of the validation split (the last 10%) of the corpus."""
    import numpy as np

    from charrnn.checkpoint import Checkpoint, TrainingState, save_checkpoint
    from charrnn.config import ModelConfig
    from charrnn.data import scan_vocab
    from charrnn.model import Parameters, init_params

    vocab = scan_vocab([CORPUS])
    checkpoints = {}
    (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
    # Also a 2x256 model of every cell: the start-up and memory sections and the
    # cold compile of a cell use it when the rows have none.
    extra = [Row(cell, 2, 256) for cell in ("lstm", "gru")]
    for row in rows + [r for r in extra if r not in rows]:
        cfg = ModelConfig(vocab_size=len(vocab), cell=row.cell, layers=row.layers, hidden=row.hidden, embed=EMBED)
        params = Parameters(cfg, np.float32)
        init_params(params, np.random.default_rng(SEED))
        path = workdir / "checkpoints" / f"{row.key}.safetensors"
        save_checkpoint(path, Checkpoint(cfg, vocab, params, state=TrainingState(step=0)))
        checkpoints[row.key] = str(path)
    text = CORPUS.read_text(encoding="utf-8")
    n_val = int(round(len(text) * VAL_FRAC))
    val = text[len(text) - n_val:]
    eval_text = val[:eval_chars + 1] if eval_chars else val
    eval_path = workdir / "eval.txt"
    eval_path.write_text(eval_text, encoding="utf-8")
    return {"vocab_size": len(vocab), "checkpoints": checkpoints, "eval_path": str(eval_path),
            "eval_chars": len(eval_text) - 1, "validation_chars": n_val}
