import contextlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

# torch-rnn's tiny test sizes: time, batch, input, hidden, vocabulary.
T, B, D, H, V = 3, 2, 4, 5, 6

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT / "data" / "tinyshakespeare.txt"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


ENGINE_SMALL_STEP = None  # the engine's own limit, recorded before the fixture lifts it


@pytest.fixture(autouse=True)
def split_even_tiny_time_steps(monkeypatch):
    """The engine runs a tiny layer's time loop on one thread (engine.SMALL_STEP);
    the tests' layers are all tiny, so lift the limit to keep the threaded loops
    under test."""
    import charrnn.engine

    global ENGINE_SMALL_STEP
    if ENGINE_SMALL_STEP is None:
        ENGINE_SMALL_STEP = charrnn.engine.SMALL_STEP
    monkeypatch.setattr(charrnn.engine, "SMALL_STEP", 0)


@pytest.fixture(autouse=True)
def own_speed_cache(tmp_path_factory, monkeypatch):
    """Runs with settings chosen record their speed (speed.remember): keep the tests'
    tiny runs out of the user's own cache, where they would mislead the next plan."""
    import charrnn.speed

    path = tmp_path_factory.mktemp("speed") / "speed.json"
    monkeypatch.setattr(charrnn.speed, "cache_path", lambda: path)


@contextlib.contextmanager
def raises_as_cli(match: str):
    """pytest.raises(CharrnnError, match=...), the message as the command line shows
    it: the library names settings (batch_size), the command line their flags."""
    from charrnn.errors import CharrnnError, as_flag, render

    with pytest.raises(CharrnnError) as info:
        yield info
    shown = render(info.value.message, as_flag)
    assert re.search(match, shown), (match, shown)


def ctrl_c_in(monkeypatch, method: str, when):
    """Deliver Ctrl-C to a run (as its signal handler would) inside Trainer.<method>,
    after it returns, when when(trainer) holds."""
    import signal

    from charrnn.training import Trainer

    real = getattr(Trainer, method)

    def signalled(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if when(self):
            self._on_stop_signal(signal.SIGINT, None)
        return out

    monkeypatch.setattr(Trainer, method, signalled)
