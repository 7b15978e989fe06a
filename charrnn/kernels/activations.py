"""Scalar activations, inlined into the cell kernels.

float32 uses a rational approximation, tanh(x) ~ x P(x^2) / Q(x^2) with |x|
clamped to 9 (a float64 minimax fit of our own; max abs error 4.2e-7 against
the exact tanh over [-20, 20]), because libm's tanh and exp are scalar calls
(20-30 ns) while this vectorises (~0.5 ns). float64 -- what the gradient checks
run in -- uses the exact functions, so a check compares the derivative formulas
with the true derivative.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

_f = np.float32
_P = tuple(map(_f, (0.9999999065834175, 0.13373201544066965, 0.003486584693658282,
                    2.0471809949261077e-05, 1.3184076053107674e-08)))
_Q = tuple(map(_f, (1.0, 0.4670649848992407, 0.025841994370452596, 0.0003271387041327569,
                    7.702627962090369e-07)))
_CLAMP = _f(9.0)
_ONE = _f(1.0)
_HALF = _f(0.5)


def tanh(x):
    """tanh; in compiled code, the float32 approximation for float32 arguments."""
    return math.tanh(x)


def sigmoid(x):
    """1 / (1 + exp(-x)); in compiled code, 0.5 + 0.5 tanh(x / 2) for float32."""
    return 0.5 * (1.0 + math.tanh(0.5 * x))


@njit(inline="always", error_model="numpy")
def _rational_tanh(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    z = x * x
    p = (((_P[4] * z + _P[3]) * z + _P[2]) * z + _P[1]) * z + _P[0]
    q = (((_Q[4] * z + _Q[3]) * z + _Q[2]) * z + _Q[1]) * z + _Q[0]
    # Near the clamp the fit overshoots 1 by an ulp; gates must stay inside [0, 1].
    return min(max(x * p / q, -_ONE), _ONE)


@overload(tanh, inline="always")
def _tanh(x):
    if x == types.float32:
        return lambda x: _rational_tanh(x)
    return lambda x: math.tanh(x)


@overload(sigmoid, inline="always")
def _sigmoid(x):
    if x == types.float32:
        return lambda x: _HALF + _HALF * _rational_tanh(_HALF * x)
    # exp(-x) overflows to inf for very negative x, giving exactly 0: no NaN.
    return lambda x: 1.0 / (1.0 + math.exp(-x))
