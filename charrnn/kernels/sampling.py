"""Drawing the next character from logits, with uniforms passed in.

Decoding follows the usual order: the logits are divided by the temperature, then
top-k keeps the k most likely characters, then top-p (nucleus) keeps the fewest of
those, most likely first, whose probability (renormalised over the top k) reaches p.
"Most likely first" orders by logit and then by id, so ties always go to the lower
id, as in argmax_rows: top_k = 1 and a tiny top_p are both exactly argmax.

Every row of a batch may decode its own way (a server batches requests with
different settings): Decoding holds one value per row.
"""

import math
from collections import namedtuple

import numpy as np

from charrnn.kernels import kernel

# How each of B rows chooses its next character: temperature (B,) float64; top_k (B,)
# int64, 0 for all; top_p (B,) float64, 1.0 for all; argmax (B,) bool, the most likely
# character instead of a draw.
Decoding = namedtuple("Decoding", ["temperature", "top_k", "top_p", "argmax"])


@kernel
def choose_rows(out, logits, uniforms, d, r0, r1):
    """out[b] for rows r0..r1: the character row b chooses by d (a Decoding), with
    uniforms[b] in [0, 1) for a draw. out: (B,) int; logits: (B, V); uniforms: (B,)."""
    V = logits.shape[1]
    keep = np.empty(V, np.bool_)
    weights = np.empty(V, np.float64)
    for b in range(r0, r1):
        if d.argmax[b]:
            out[b] = _argmax(logits[b])
        else:
            out[b] = _draw(logits[b], d.temperature[b], uniforms[b], d.top_k[b], d.top_p[b], keep, weights)


@kernel
def sample_rows(out, logits, temperature, uniforms, top_k=0, top_p=1.0):
    """out[b] = a draw from softmax(logits[b] / temperature), restricted to the top_k
    most likely characters (0: all) and then to the top_p nucleus (1.0: all), using
    uniforms[b] in [0, 1). out: (B,) int; logits: (B, V); uniforms: (B,); the same
    settings for every row."""
    V = logits.shape[1]
    keep = np.empty(V, np.bool_)
    weights = np.empty(V, np.float64)
    for b in range(logits.shape[0]):
        out[b] = _draw(logits[b], temperature, uniforms[b], top_k, top_p, keep, weights)


@kernel
def _draw(row, temperature, u, top_k, top_p, keep, weights):
    """One draw from row (V,) as sample_rows describes; keep, weights: (V,) workspaces.

    The draw is the inverse CDF over the kept characters in id order, so with no
    restriction (or one that keeps every character) it is the same draw as without."""
    V = row.shape[0]
    k = V if top_k <= 0 or top_k >= V else top_k
    m = row[0]
    for j in range(1, V):
        if row[j] > m:
            m = row[j]
    for j in range(V):
        weights[j] = math.exp((row[j] - m) / temperature)
    if k < V or top_p < 1.0:
        _restrict(keep, row, weights, k, top_p)
    else:
        keep[:] = True
    # Inverse CDF: the first kept index whose cumulative mass passes u * total.
    total = 0.0
    for j in range(V):
        if keep[j]:
            total += weights[j]
    target = u * total
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
    return choice


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
def _argmax(row):
    """The index of the largest value of row (the first one on ties)."""
    best = 0
    for j in range(1, row.shape[0]):
        if row[j] > row[best]:
            best = j
    return best


@kernel
def argmax_rows(out, logits):
    """out[b] = index of the largest logit in row b (the first one on ties)."""
    for b in range(logits.shape[0]):
        out[b] = _argmax(logits[b])
