"""charrnn: character-level recurrent language models on the CPU.

Importing the package is cheap: Numba and the compiled kernels load only when a
command needs them.
"""

__version__ = "0.1.0"
