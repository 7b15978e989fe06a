"""Real signals to a real `python -m charrnn train`: SIGKILL at random moments while it
rewrites its files at every step never leaves a file that does not load, and SIGINT
or SIGTERM saves last.safetensors and exits with status 130 or 143; a second train on
the same --out is refused while the first runs."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import SHAKESPEARE

from charrnn.checkpoint import load_checkpoint

# Validate and write all three files at every step, so that a kill lands mid-write often.
TINY = ["--layers", "1", "--hidden", "16", "--embed", "8", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "1", "-q"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("crash") / "corpus.txt"
    path.write_text(SHAKESPEARE.read_text()[:6000])
    return path


def train(corpus, out, *args):
    return subprocess.Popen([sys.executable, "-m", "charrnn", "train", str(corpus), "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Generous: a process that finds no compiled kernels in Numba's cache (a fresh clone
# running this file alone) compiles for about a minute before its first step.
STARTUP_TIMEOUT = 300.0


def wait_for_a_write(proc, path, after: float, timeout: float = STARTUP_TIMEOUT) -> None:
    """Until path has been (re)written later than `after` by proc."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_mtime > after):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training wrote nothing"
        time.sleep(0.01)


def check_run_directory(out) -> int:
    """Every file loads; returns the step of last.safetensors."""
    last = load_checkpoint(out / "last.safetensors")
    best = load_checkpoint(out / "best.safetensors")
    # best is written before last, so a kill between the two leaves best one evaluation
    # ahead (--eval-every 1); resuming from last reconciles that.
    assert best.state.step <= last.state.step + 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(isinstance(r["step"], int) for r in rows)
    return last.state.step


def test_sigkill_at_random_moments_leaves_loadable_files(corpus, tmp_path):
    out = tmp_path / "run"
    last = out / "last.safetensors"
    rng = random.Random(1234)
    step = 0
    for round_ in range(3):
        args = [*TINY, "--max-steps", "100000"] if round_ == 0 else ["-q", "--resume", str(last)]
        started = time.time()
        proc = train(corpus, out, *args)
        try:
            wait_for_a_write(proc, last, after=started)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        new_step = check_run_directory(out)
        assert new_step > step  # each round resumed and made progress
        step = new_step
    # Whatever the kills left half-written does not stop the next run, which clears it.
    finished = train(corpus, out, "-q", "--resume", str(last), "--max-steps", str(step + 3))
    _, stderr = finished.communicate(timeout=STARTUP_TIMEOUT)
    assert finished.returncode == 0, stderr
    assert check_run_directory(out) == step + 3
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("signum,status,said", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_sigint_or_sigterm_saves_last_and_exits_128_plus_the_signal(corpus, tmp_path, signum, status, said):
    out = tmp_path / "run"
    started = time.time()
    proc = train(corpus, out, *TINY, "--max-steps", "100000")
    try:
        wait_for_a_write(proc, out / "last.safetensors", after=started)
        time.sleep(0.1)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, stderr
    assert f"{said} at step" in stderr and f"saved {out / 'last.safetensors'}" in stderr
    assert "Traceback" not in stderr
    step = check_run_directory(out)
    assert f"{said} at step {step};" in stderr


def test_a_second_train_on_the_same_out_is_refused_while_the_first_runs(corpus, tmp_path):
    out = tmp_path / "run"
    started = time.time()
    first = train(corpus, out, *TINY, "--max-steps", "100000")
    try:
        wait_for_a_write(first, out / "last.safetensors", after=started)
        second = subprocess.run([sys.executable, "-m", "charrnn", "train", str(corpus), "--out", str(out),
                                 *TINY, "--max-steps", "5", "--overwrite"],
                                capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
        assert first.poll() is None  # the first run goes on
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert second.stderr.strip() == f"Error: another charrnn train is writing to {out}; " \
                                    f"wait for it to end, or give another --out"
    assert first.returncode == 130, stderr
    check_run_directory(out)
