"""charrnn's benchmarks.

  python -m benchmarks            the regression suite, `make bench` (run.py runs
                                  sections/*.py on the state in suite.py)
  python -m benchmarks.quality    validation loss reached in a time budget, `make bench-quality`
  python -m benchmarks.parity     `charrnn evaluate` against PyTorch on the same checkpoints
  python -m benchmarks.probes.*   one-off investigations behind the suite's figures
  *_worker.py                     one measurement per process (charrnn, torch, peaks, quality)
  common.py                       what all of them share
  results/                        each run's <date>.txt report, and summary.jsonl: one line
                                  per table row of every run
"""
