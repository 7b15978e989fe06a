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
