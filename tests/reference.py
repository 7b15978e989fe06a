"""Naive NumPy versions of the model's math, written for clarity, not speed: the
kernels are checked against these (and against central differences)."""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """x: (T, B, D) -> hs, cs: (T, B, H); PyTorch's gate order i, f, g, o."""
    H = h0.shape[1]
    h, c, hs, cs = h0, c0, [], []
    for xt in x:
        a = xt @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
    return np.array(hs), np.array(cs)


def gru(x, h0, w_ih, w_hh, b_ih, b_hh):
    """x: (T, B, D) -> hs: (T, B, H); PyTorch's gate order r, z, n."""
    H = h0.shape[1]
    h, hs = h0, []
    for xt in x:
        gi = xt @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        hs.append(h)
    return np.array(hs)


def rnn(x, h0, w_ih, w_hh, b_ih, b_hh):
    h, hs = h0, []
    for xt in x:
        h = np.tanh(xt @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        hs.append(h)
    return np.array(hs)


def log_softmax(logits):
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def network_loss(params, cfg, ids, targets, h0, c0=None, masks=None):
    """Summed cross-entropy of the whole network. params: name -> array (torch names);
    ids, targets: (T, B); h0, c0: (layers, B, H); masks: per layer (T, B, H) or None."""
    x = params["embedding.weight"][ids]
    for layer in range(cfg.layers):
        w = [params[f"rnn.{k}_l{layer}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if cfg.cell == "lstm":
            x, _ = lstm(x, h0[layer], c0[layer], *w)
        elif cfg.cell == "gru":
            x = gru(x, h0[layer], *w)
        else:
            x = rnn(x, h0[layer], *w)
        if masks is not None:
            x = x * masks[layer]
    logits = x @ params["decoder.weight"].T + params["decoder.bias"]
    logp = log_softmax(logits)
    T, B = ids.shape
    return -logp[np.arange(T)[:, None], np.arange(B)[None, :], targets].sum()


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() w.r.t. every element of x (changed in place
    and restored)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return g
