"""Drawing the next character from logits, with uniforms passed in."""

import math

from charrnn.kernels import kernel


@kernel
def sample_rows(out, logits, temperature, uniforms):
    """out[b] = a draw from softmax(logits[b] / temperature), using uniforms[b] in [0, 1).
    out: (B,) int; logits: (B, V); uniforms: (B,)."""
    B, V = logits.shape
    for b in range(B):
        row = logits[b]
        m = row[0]
        for j in range(1, V):
            if row[j] > m:
                m = row[j]
        total = 0.0
        for j in range(V):
            total += math.exp((row[j] - m) / temperature)
        # Inverse CDF: the first index whose cumulative mass passes u * total.
        target = uniforms[b] * total
        cum = 0.0
        choice = -1
        for j in range(V):
            w = math.exp((row[j] - m) / temperature)
            cum += w
            if w > 0.0:
                choice = j
                if cum > target:
                    break
        out[b] = choice


@kernel
def argmax_rows(out, logits):
    """out[b] = index of the largest logit in row b (the first one on ties)."""
    for b in range(logits.shape[0]):
        row = logits[b]
        best = 0
        for j in range(1, row.shape[0]):
            if row[j] > row[best]:
                best = j
        out[b] = best
