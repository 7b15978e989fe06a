"""Drawing the next character from logits, with uniforms passed in.

Decoding follows the usual order: the logits are divided by the temperature, then
top-k keeps the k most likely characters, then top-p (nucleus) keeps the fewest of
those, most likely first, whose probability (renormalised over the top k) reaches p.
"Most likely first" orders by logit and then by id, so ties always go to the lower
id, as in argmax_rows: top_k = 1 and a tiny top_p are both exactly argmax.
"""

import math

import numpy as np

from charrnn.kernels import kernel


@kernel
def sample_rows(out, logits, temperature, uniforms, top_k=0, top_p=1.0):
    """out[b] = a draw from softmax(logits[b] / temperature), restricted to the top_k
    most likely characters (0: all) and then to the top_p nucleus (1.0: all), using
    uniforms[b] in [0, 1). out: (B,) int; logits: (B, V); uniforms: (B,).

    The draw is the inverse CDF over the kept characters in id order, so with no
    restriction (or one that keeps every character) it is the same draw as without."""
    B, V = logits.shape
    keep = np.ones(V, np.bool_)
    weights = np.empty(V, np.float64)
    k = V if top_k <= 0 or top_k >= V else top_k
    for b in range(B):
        row = logits[b]
        m = row[0]
        for j in range(1, V):
            if row[j] > m:
                m = row[j]
        for j in range(V):
            weights[j] = math.exp((row[j] - m) / temperature)
        if k < V or top_p < 1.0:
            _restrict(keep, row, weights, k, top_p)
        # Inverse CDF: the first kept index whose cumulative mass passes u * total.
        total = 0.0
        for j in range(V):
            if keep[j]:
                total += weights[j]
        target = uniforms[b] * total
        cum = 0.0
        choice = -1
        for j in range(V):
            if keep[j]:
                w = weights[j]
                cum += w
                if w > 0.0:
                    choice = j
                    if cum > target:
                        break
        out[b] = choice


@kernel
def _restrict(keep, row, weights, k, top_p):
    """keep[j] = whether character j is among the k most likely (by logit, then by
    lower id) and inside the top_p nucleus of those, weighted by weights."""
    order = np.argsort(-row, kind="mergesort")  # stable: equal logits keep id order
    keep[:] = False
    total = 0.0
    for i in range(k):
        total += weights[order[i]]
    target = top_p * total
    cum = 0.0
    for i in range(k):
        keep[order[i]] = True
        cum += weights[order[i]]
        if cum >= target:
            break


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
