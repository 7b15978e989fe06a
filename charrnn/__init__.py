"""charrnn: character-level recurrent language models on the CPU.

    import charrnn
    model = charrnn.load("runs/shakespeare/best.safetensors")
    print(model.generate("ROMEO:", length=200, seed=7))

Importing the package is cheap: Numba and the compiled engine load on first use of
load, train, Model and the other names of charrnn.api.
"""

from charrnn.errors import CharrnnError, SettingError, UnknownCharactersError, UnknownSettingError

__version__ = "0.1.0"
__all__ = ["CharrnnError", "LineScore", "Model", "Score", "SettingError", "TrainingRun", "UnknownCharactersError",
           "UnknownSettingError", "load", "train"]

_API = {"load", "train", "Model", "Score", "LineScore", "TrainingRun"}


def __getattr__(name):
    if name in _API:
        from charrnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
