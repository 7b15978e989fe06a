"""Adam with clipping by global norm, on the flat parameter buffers: the one writer
of a model's weights during training; and the moving average of the weights that a
run may evaluate and save instead of the weights themselves."""

from __future__ import annotations

import math

from charrnn.engine import threads
from charrnn.kernels.optim import adam_update, ema_update, sum_squares
from charrnn.model import ParamBuffer, Parameters

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
SLOTS = ("exp_avg", "exp_avg_sq")  # torch.optim.Adam's names for the two moments


class Adam:
    """torch.optim.Adam's update (bias-corrected moments; eps added to the corrected
    root of v), or AdamW's with a weight decay. moments: slot name -> ParamBuffer, zeros for a new run."""

    def __init__(self, params: Parameters, moments: dict[str, ParamBuffer] | None = None):
        self.params = params
        self.moments = moments if moments is not None else {slot: params.zeros_like() for slot in SLOTS}

    def step(self, grads: ParamBuffer, lr: float, step: int, grad_norm: float, max_norm: float,
             weight_decay: float = 0.0) -> None:
        """Update the weights from grads, clipped to max_norm (grad_norm is their global
        norm); step counts from 1. Clipping is a scale the update applies as it reads
        the gradient, so it costs no pass of its own. weight_decay > 0 makes it AdamW's
        step: every weight (biases and embedding too, as torch.optim.AdamW does with
        model.parameters()) first shrinks by lr * weight_decay."""
        scale = max_norm / (grad_norm + 1e-6) if grad_norm > max_norm else 1.0
        with self.params.write() as w:
            adam_update(w.flat, grads.flat, self.moments["exp_avg"].flat, self.moments["exp_avg_sq"].flat, lr,
                        ADAM_BETAS[0], ADAM_BETAS[1], ADAM_EPS, weight_decay, step, threads(), scale)


class WeightAverage:
    """An exponential moving average of the weights, updated after each optimiser step:
    avg = d * avg + (1 - d) * params with d = min(decay, (1 + t) / (10 + t)) at step t
    (from 1), so that early steps, far from where training ends, fade fast. Averaging
    over the last few hundred steps smooths the noise of the last updates, which often
    scores a little better than the weights themselves."""

    def __init__(self, params: Parameters, decay: float, avg: Parameters | None = None):
        self.params, self.decay = params, decay
        self.avg = avg if avg is not None else Parameters(params.cfg, flat=params.flat.copy())

    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        with self.avg.write() as w:
            ema_update(w.flat, self.params.kernel_view.flat, d, threads())


def global_norm(grads: ParamBuffer) -> float:
    """The gradient's L2 norm over every parameter."""
    return math.sqrt(sum_squares(grads.flat, threads()))
