"""Choosing the next character from logits, with uniforms passed in.

Decoding follows one order: banned characters are removed and repetition control
(DRY) lowers the logits of characters that would extend a repetition; then the
logits are divided by the temperature, top-k keeps the k most likely characters,
top-p (nucleus) keeps the fewest of those, most likely first, whose probability
(renormalised over the top k) reaches p, and min-p keeps those at least p times as
likely as the most likely one. "Most likely first" orders by logit and then by id,
so ties always go to the lower id, as in argmax: top_k = 1 and a tiny top_p are
both exactly argmax. argmax takes the most likely character after the ban and DRY.

Every row of a batch may decode its own way (a server batches requests with
different settings): Decoding holds one value per row.
"""

import math
from collections import namedtuple

import numpy as np

from charrnn.kernels import kernel

# How each of B rows chooses its next character, one value per row:
#   temperature (B,) float64; top_k (B,) int64, 0 for all; top_p (B,) float64, 1.0
#   for all; min_p (B,) float64, 0.0 for none; argmax (B,) bool;
#   ban (B, V) bool, True for a character never chosen (or (B, 0): none banned);
#   DRY (see dry_penalize): dry_multiplier (B,) float64, 0.0 for off; dry_base (B,)
#   float64; dry_allowed (B,) int64; dry_last_n (B,) int64.
Decoding = namedtuple("Decoding", ["temperature", "top_k", "top_p", "min_p", "argmax", "ban", "dry_multiplier",
                                   "dry_base", "dry_allowed", "dry_last_n"])

# The characters each row has read so far, for DRY: ids (B, cap) int64, the last
# length[b] of row b's characters in ids[b, :length[b]] (cap 0: no row uses DRY).
History = namedtuple("History", ["ids", "length"])

# The largest DRY penalty: huge but finite in float32, so that no character becomes
# impossible by repetition alone (llama.cpp caps it too).
_MAX_DRY_PENALTY = 1e30


@kernel
def choose_rows(out, logits, uniforms, d, hist, r0, r1):
    """out[b] for rows r0..r1: the character row b chooses by d (a Decoding), with
    uniforms[b] in [0, 1) for a draw. logits (B, V) are changed in place (bans and
    DRY penalties). hist: History. out: (B,) int; uniforms: (B,)."""
    V = logits.shape[1]
    keep = np.empty(V, np.bool_)
    weights = np.empty(V, np.float64)
    z = np.empty(hist.ids.shape[1], np.int64)
    runs = np.empty(V, np.int64)
    for b in range(r0, r1):
        row = logits[b]
        if d.ban.shape[1] > 0:
            for j in range(V):
                if d.ban[b, j]:
                    row[j] = -np.inf
        if d.dry_multiplier[b] > 0.0:
            n = min(hist.length[b], d.dry_last_n[b])
            dry_penalize(row, hist.ids[b, hist.length[b] - n:hist.length[b]], d.dry_multiplier[b], d.dry_base[b],
                         d.dry_allowed[b], z, runs)
        if d.argmax[b]:
            out[b] = _argmax(row)
        else:
            out[b] = _draw(row, d.temperature[b], uniforms[b], d.top_k[b], d.top_p[b], d.min_p[b], keep, weights)


@kernel
def dry_penalize(row, context, multiplier, base, allowed, z, runs):
    """llama.cpp's DRY ("don't repeat yourself") on one row of logits (V,): a character
    c that would extend a repetition -- the context's last n characters followed by c
    occur earlier in the context -- with n >= allowed loses multiplier *
    base ** (n - allowed) from its logit, n the longest such repetition.

    context: (L,) the characters read so far (the last dry_last_n); z: (>= L,) and
    runs: (V,) workspaces. O(L): the Z-function of the reversed context gives, for
    every earlier position, how long the text ending there matches the context's end."""
    L = context.shape[0]
    runs[:] = 0
    if L < 2:
        return
    _reversed_z(z, context, L)
    for j in range(1, L):
        # The text ending just before j matches the context's end over z[L - j] characters,
        # so character context[j] would extend a repetition that long.
        n = z[L - j]
        c = context[j]
        if n > runs[c]:
            runs[c] = n
    for c in range(row.shape[0]):
        if runs[c] >= allowed:
            row[c] -= min(multiplier * base ** float(runs[c] - allowed), _MAX_DRY_PENALTY)


@kernel
def _reversed_z(z, s, L):
    """z[i] = the length of the longest common prefix of r and r[i:], r = s[:L] reversed
    (z[0] = L): the classic Z-algorithm, O(L)."""
    z[0] = L
    left, right = 0, 0
    for i in range(1, L):
        k = 0
        if i < right:
            k = min(right - i, z[i - left])
        while i + k < L and s[L - 1 - k] == s[L - 1 - (i + k)]:
            k += 1
        z[i] = k
        if i + k > right:
            left, right = i, i + k


@kernel
def history_append(hist, choice, b, last_n):
    """Add row b's new character to hist (History), keeping at least its last last_n:
    a full row slides its last last_n characters to the front (amortised O(1))."""
    cap = hist.ids.shape[1]
    if cap == 0 or last_n == 0:
        return
    n = hist.length[b]
    if n == cap:
        keep = min(last_n, cap - 1)
        for i in range(keep):
            hist.ids[b, i] = hist.ids[b, cap - keep + i]
        n = keep
    hist.ids[b, n] = choice
    hist.length[b] = n + 1


@kernel
def sample_rows(out, logits, temperature, uniforms, top_k=0, top_p=1.0, min_p=0.0):
    """out[b] = a draw from softmax(logits[b] / temperature), restricted to the top_k
    most likely characters (0: all), then to the top_p nucleus (1.0: all), then to
    those at least min_p times as likely as the most likely one, using uniforms[b]
    in [0, 1). out: (B,) int; logits: (B, V); uniforms: (B,); the same settings for
    every row."""
    V = logits.shape[1]
    keep = np.empty(V, np.bool_)
    weights = np.empty(V, np.float64)
    for b in range(logits.shape[0]):
        out[b] = _draw(logits[b], temperature, uniforms[b], top_k, top_p, min_p, keep, weights)


@kernel
def _draw(row, temperature, u, top_k, top_p, min_p, keep, weights):
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
        weights[j] = math.exp((row[j] - m) / temperature)  # the most likely has weight 1
    if k < V or top_p < 1.0:
        _restrict(keep, row, weights, k, top_p)
    else:
        keep[:] = True
    if min_p > 0.0:
        for j in range(V):
            if weights[j] < min_p:
                keep[j] = False
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
