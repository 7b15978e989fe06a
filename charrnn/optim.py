"""Adam with clipping by global norm, on the flat parameter buffers: the one writer
of a model's weights during training."""

from __future__ import annotations

import math

from charrnn.engine import threads
from charrnn.kernels.optim import adam_update, sum_squares
from charrnn.model import ParamBuffer, Parameters

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
SLOTS = ("exp_avg", "exp_avg_sq")  # torch.optim.Adam's names for the two moments


class Adam:
    """torch.optim.Adam's update (bias-corrected moments; eps added to the corrected
    root of v). moments: slot name -> ParamBuffer, zeros for a new run."""

    def __init__(self, params: Parameters, moments: dict[str, ParamBuffer] | None = None):
        self.params = params
        self.moments = moments if moments is not None else {slot: params.zeros_like() for slot in SLOTS}

    def step(self, grads: ParamBuffer, lr: float, step: int, grad_norm: float, max_norm: float) -> None:
        """Update the weights from grads, clipped to max_norm (grad_norm is their global
        norm); step counts from 1. Clipping is a scale the update applies as it reads
        the gradient, so it costs no pass of its own."""
        scale = max_norm / (grad_norm + 1e-6) if grad_norm > max_norm else 1.0
        with self.params.write() as w:
            adam_update(w.flat, grads.flat, self.moments["exp_avg"].flat, self.moments["exp_avg_sq"].flat, lr,
                        ADAM_BETAS[0], ADAM_BETAS[1], ADAM_EPS, step, threads(), scale)


def global_norm(grads: ParamBuffer) -> float:
    """The gradient's L2 norm over every parameter."""
    return math.sqrt(sum_squares(grads.flat, threads()))
