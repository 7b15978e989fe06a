"""Checkpoints mean in PyTorch what they mean here. Skipped when torch is absent."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHAKESPEARE

torch = pytest.importorskip("torch", reason="the parity tests need torch 2.13.0: make test installs it where pip finds it")
nn = torch.nn

from charrnn.cli import cli  # noqa: E402
from charrnn.config import ModelConfig  # noqa: E402
from charrnn.model import Parameters, RecurrentState, init_params  # noqa: E402
from charrnn.network import Network  # noqa: E402

CELLS = ["lstm", "gru", "rnn"]


class CharRNN(nn.Module):
    """The module the README shows: attribute names make load_state_dict work."""

    def __init__(self, config):
        super().__init__()
        vocab, embed, hidden = config["vocab_size"], config["embed"], config["hidden"]
        rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[config["cell"]]
        self.embedding = nn.Embedding(vocab, embed)
        self.rnn = rnn_class(embed, hidden, num_layers=config["layers"], dropout=config["dropout"])
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, ids, state=None):
        out, state = self.rnn(self.embedding(ids), state)
        return self.decoder(out), state


def load_into_torch(path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["charrnn"])
    model = CharRNN(meta["config"])
    tensors = load_file(str(path))
    model.load_state_dict({k: v for k, v in tensors.items() if k.split(".")[0] in ("embedding", "rnn", "decoder")})
    return model.eval(), meta


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("cell", CELLS)
def test_evaluate_agrees_with_pytorch_to_1e4_nats(cell, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:20000])
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(SHAKESPEARE.read_text()[20000:26000])
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", str(corpus), "--out", str(out), "--cell", cell, "--hidden", "32",
                                 "--embed", "16", "--batch-size", "8", "--seq-len", "32", "--max-steps", "40",
                                 "--eval-every", "40", "--dropout", "0.1", "-q"])
    assert result.exit_code == 0, result.output
    ckpt = out / "best.safetensors"
    ours = json.loads(runner.invoke(cli, ["evaluate", str(ckpt), str(held_out), "--json"]).stdout)

    model, meta = load_into_torch(ckpt)
    stoi = {c: i for i, c in enumerate(meta["vocab"])}
    ids = torch.tensor([stoi[c] for c in held_out.read_text()]).reshape(-1, 1)
    with torch.no_grad():
        logits, _ = model(ids[:-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[1:].reshape(-1))
    assert ours["chars"] == ids.shape[0] - 1
    assert abs(ours["nats_per_char"] - loss.item()) < 1e-4


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_agree_with_pytorch_in_float64(cell):
    """Loss, every parameter's gradient and the initial state's gradient, through a
    carried non-zero state, against torch autograd in float64."""
    rng = np.random.default_rng(0)
    cfg = ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=7, embed=5)
    params = Parameters(cfg, np.float64)
    init_params(params, rng)
    T, B = 6, 3
    ids, targets = rng.integers(0, 11, (T, B)), rng.integers(0, 11, (T, B))
    state = RecurrentState.zeros(cfg, B, np.float64)
    state.h[:] = rng.standard_normal(state.h.shape)
    if state.c is not None:
        state.c[:] = rng.standard_normal(state.c.shape)
    from charrnn.kernels.loss import softmax_xent_backward

    grads = params.zeros_like()
    net = Network(cfg, params)
    logits, _ = net.forward(ids, state)
    loss = softmax_xent_backward(logits, logits, targets.reshape(-1), 1.0 / targets.size, 2) / targets.size
    dstate0 = net.backward(logits, grads)

    model = CharRNN(cfg.to_dict()).double()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.views.items()})
    h0 = torch.tensor(state.h, requires_grad=True)
    c0 = torch.tensor(state.c, requires_grad=True) if state.c is not None else None
    logits, _ = model(torch.from_numpy(ids), (h0, c0) if cell == "lstm" else h0)
    torch_loss = nn.functional.cross_entropy(logits.reshape(-1, 11), torch.from_numpy(targets).reshape(-1))
    torch_loss.backward()
    assert loss == pytest.approx(torch_loss.item(), rel=1e-12)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(dstate0.h, h0.grad.numpy(), rtol=1e-9, atol=1e-12)
    if c0 is not None:
        np.testing.assert_allclose(dstate0.c, c0.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_weight_decay_is_torch_adamw():
    from charrnn.kernels.optim import adam_update

    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(50)
    ours, m, v = p0.copy(), np.zeros(50), np.zeros(50)
    theirs = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.3)
    for step in range(1, 6):
        g = rng.standard_normal(50)
        adam_update(ours, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.3, step, 2)
        theirs.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)
