"""The sections of `python -m benchmarks`, in the order they run. Each module has

  run(suite)        measure, add its part to the report (suite.out) and its raw
                    data to suite.results[<section>]
  summary(results)  the summary.jsonl lines of its table's rows, from the raw data
                    (of this run, or of a saved --json file)

prepare.py (checkpoints and texts) and header.py (the report's header) come first
and are not sections one can choose.
"""

from benchmarks.common import run_fields
from benchmarks.sections import cold_compile, evaluate, memory, peaks, sample, serving, startup, train

SECTIONS = {"peaks": peaks, "compile": cold_compile, "train": train, "sample": sample, "evaluate": evaluate,
            "serving": serving, "startup": startup, "memory": memory}


def summary_lines(results: dict, report_name: str | None) -> list[dict]:
    """The summary.jsonl lines of a run (its raw data): one per row of each table it
    printed, each starting with when, which commit and which machine."""
    if "meta" not in results:
        return []
    first = run_fields(results["meta"], report_name)
    return [{**first, **line} for section in SECTIONS.values() for line in section.summary(results)]
