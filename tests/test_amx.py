"""bfloat16 products (kernels/amx.py: on AMX tiles, or on AVX512-BF16 through
kernels/dpbf16.py, whichever unit this process uses; test_isa.py runs them under the
other too where the CPU has both) and training in precision bf16:
rounding against a plain reference, every layout and edge against a float64
product of the rounded operands, threads cannot change a bit, the network's
gradients against float32's, exact resume, and the refusal where AMX is missing.

A float64 central-difference check cannot apply to bfloat16 products (their
operands are rounded by design): the network's bf16 gradients are checked against
its float32 ones, which test_model.py checks by central differences."""

import os
import subprocess
import sys

import numpy as np
import pytest

from charrnn import isa
from charrnn.config import ModelConfig
from charrnn.engine import packed, product
from charrnn.errors import CharrnnError
from charrnn.kernels import amx
from charrnn.model import Parameters, RecurrentState, init_params, parameter_shapes
from charrnn.network import Network

MISSING = isa.bf16_missing(isa.active())
needs_bf16 = pytest.mark.skipif(MISSING is not None, reason=f"no bfloat16 unit in this process: {MISSING}")


def rounded(x):
    """float32 values rounded to the nearest bfloat16, ties to even, subnormals to
    zero as the CPU's vcvtneps2bf16 does (the reference)."""
    x = np.asarray(x, np.float32)
    x = np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0.0) * np.sign(x), x)
    bits = x.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


@needs_bf16
def test_rounding_is_to_nearest_even():
    from charrnn.kernels.amx import to_bf16_rows

    values = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20, -2.5, 3.0e38, 1e-40, 0.0,
                       -0.0, np.inf, -np.inf], np.float32)
    values = np.concatenate([values, np.random.default_rng(0).standard_normal(200).astype(np.float32)])
    out = np.empty((32, 224), np.uint16)
    to_bf16_rows(out, values[None, :], False, np.zeros(0, np.float32), 0, 32)
    got = (out[0, :values.size].astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got, rounded(values))
    assert not out[1:].any() and not out[0, values.size:].any()  # padding is zero
    assert got[1] == 1.0 and got[2] == 1.0 + 2 ** -6  # the ties: down to even, up to even


@needs_bf16
@pytest.mark.parametrize("K,M,r0,r1", [(16, 16, 0, 32), (33, 100, 32, 128), (300, 130, 0, 160), (5, 40, 0, 64),
                                       (2500, 64, 0, 64)])
def test_a_transposed_rounding_is_the_plain_one(K, M, r0, r1):
    """to_bf16_rows of a transposed A, by 16 x 16 blocks in registers and the rest
    value by value, against the plain reference: every value and zero padding
    exact, and each row sum that of a column sum taken in row order in float32."""
    from charrnn.kernels.amx import to_bf16_rows

    rng = np.random.default_rng(K * M)
    src = rng.standard_normal((K, M)).astype(np.float32)
    dst = np.full((r1 + 32, K + 40), 7, np.uint16)
    sums = np.full(M, 0.25, np.float32)
    to_bf16_rows(dst, src, True, sums, r0, r1)
    got = (dst[r0:r1].astype(np.uint32) << 16).view(np.float32)
    rows = min(r1, M) - r0
    np.testing.assert_array_equal(got[:rows, :K], rounded(src.T[r0:r0 + rows]))
    assert not got[:, K:].any() and not got[rows:].any()  # padding is zero
    assert (dst[:r0] == 7).all() and (dst[r1:] == 7).all()  # other rows untouched
    expected = np.full(M, 0.25, np.float32)
    for k in range(K):
        expected[r0:r0 + rows] += src[k, r0:r0 + rows]
    np.testing.assert_array_equal(sums, expected)


@needs_bf16
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (37, 45, 70), (32, 64, 32), (100, 33, 96), (130, 300, 65)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_product_equals_the_rounded_operands_product(M, K, N, trans_a, trans_b):
    rng = np.random.default_rng(M * K + N)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    expected = c0.astype(np.float64) + rounded(op_a).astype(np.float64) @ rounded(op_b).astype(np.float64)
    results = []
    for nthreads in (1, 2, 3):
        c = c0.copy()
        sums = np.full(M, 0.5, np.float32) if trans_a else None
        product(c, a, trans_a, packed(b, trans_b, nthreads, bf16=True), nthreads, row_sums=sums)
        # float32 sums of exact products: only their rounding differs from float64
        np.testing.assert_allclose(c, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()) * np.sqrt(K))
        if trans_a:
            np.testing.assert_allclose(sums, 0.5 + op_a.sum(axis=1), rtol=1e-5, atol=1e-4)
        results.append(c)
    for c in results[1:]:  # each element is one chain of sums, whichever thread computes it
        np.testing.assert_array_equal(c, results[0])


@needs_bf16
@pytest.mark.parametrize("M,K,nthreads", [(20, 45, 2), (130, 300, 2), (130, 70, 1)])
def test_a_product_of_an_a_rounded_beforehand_equals_one_that_rounds_it_bit_for_bit(M, K, nthreads):
    """a_bf16: a transposed A already rounded (the gate gradients, as the backward time
    loop leaves them for w_hh's and w_ih's gradients) is multiplied as it is; the
    result equals a product that rounds A itself, also where that one would have been
    split by panels (M=20). A wrong shape or row sums with it are refused."""
    rng = np.random.default_rng(M + K)
    a = rng.standard_normal((K, M)).astype(np.float32)
    b = packed(rng.standard_normal((K, 70)).astype(np.float32), False, nthreads, bf16=True)
    a_bf16 = np.full((amx.padded(M), amx.padded(K)), 7, np.uint16)
    amx.to_bf16_rows(a_bf16, a, True, np.empty(0, np.float32), 0, a_bf16.shape[0])
    given, alone = np.zeros((M, 70), np.float32), np.zeros((M, 70), np.float32)
    product(given, np.zeros_like(a), True, b, nthreads, a_bf16=a_bf16)  # a is not read
    product(alone, a, True, b, nthreads)
    np.testing.assert_array_equal(given, alone)
    with pytest.raises(ValueError, match="not with a_bf16"):
        product(given, a, True, b, nthreads, row_sums=np.zeros(M, np.float32), a_bf16=a_bf16)
    with pytest.raises(ValueError, match="must be a contiguous"):
        product(given, a, True, b, nthreads, a_bf16=a_bf16[:, :-amx.BLOCK])


@needs_bf16
def test_a_row_alone_equals_the_row_in_a_batch():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((70, 130)).astype(np.float32)
    bp = packed(rng.standard_normal((130, 96)).astype(np.float32), False, 2, bf16=True)
    whole = np.zeros((70, 96), np.float32)
    product(whole, a, False, bp, 2)
    for r in (0, 33, 69):
        alone = np.zeros((1, 96), np.float32)
        product(alone, a[r:r + 1], False, bp, 2)
        np.testing.assert_array_equal(alone[0], whole[r])


def tiny_network(cell, precision, weight_drop=0.0):
    cfg = ModelConfig(vocab_size=11, cell=cell, layers=2, hidden=40, embed=6, dropout=0.2, weight_drop=weight_drop)
    params = Parameters(cfg, np.float32)
    init_params(params, np.random.default_rng(1))
    return cfg, params, Network(cfg, params, precision)


@needs_bf16
@pytest.mark.parametrize("cell,weight_drop", [("lstm", 0.0), ("gru", 0.3), ("rnn", 0.0)])
def test_bf16_training_pass_is_float32s_within_bfloat16_rounding(cell, weight_drop):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 11, (9, 5))
    targets = rng.integers(0, 11, (9, 5))
    out = {}
    cfg = None
    for precision in ("float32", "bf16"):
        cfg, params, net = tiny_network(cell, precision, weight_drop)
        grads = params.zeros_like()
        state = RecurrentState.zeros(cfg, 5, np.float32)
        loss, _ = net.loss_and_grad(ids, targets, state, grads, dropout_key=7)
        out[precision] = loss, grads, net.loss_sum(ids, targets, state)[0]
    (loss32, g32, eval32), (loss16, g16, eval16) = out["float32"], out["bf16"]
    assert loss16 != loss32 and abs(loss16 - loss32) < 1e-2 * loss32  # the products did run in bfloat16
    assert eval16 == eval32  # evaluation stays float32
    for name, _ in parameter_shapes(cfg):
        grad = g32[name]
        error = np.linalg.norm(g16[name] - grad) / max(np.linalg.norm(grad), 1e-12)
        assert error < 3e-2, (name, error)


@needs_bf16
def test_bf16_resumes_bit_for_bit(tmp_path):
    from conftest import SHAKESPEARE
    from test_train import TINY_MODEL, TINY_TRAIN  # the training tests' tiny run, in bf16

    from charrnn.training import Trainer

    text = tmp_path / "corpus.txt"
    text.write_text(SHAKESPEARE.read_text()[:8000])
    settings = dict(TINY_TRAIN, lr_schedule="constant", precision="bf16")

    def run(out, steps, resume=None):
        Trainer(text, out, dict(TINY_MODEL) if resume is None else {}, dict(settings, max_steps=steps),
                resume=resume, progress=False).run()

    run(tmp_path / "whole", 20)
    run(tmp_path / "split", 10)
    run(tmp_path / "split", 20, resume=tmp_path / "split" / "last.safetensors")
    assert (tmp_path / "whole" / "last.safetensors").read_bytes() == (tmp_path / "split" / "last.safetensors").read_bytes()


def test_bf16_is_refused_below_avx512_with_one_line_and_no_run(tmp_path):
    if "avx2" not in isa.active().supported:
        pytest.skip("this CPU has no AVX2 level to force")
    text = tmp_path / "corpus.txt"
    text.write_text("hello world\n" * 200)
    result = subprocess.run([sys.executable, "-m", "charrnn", "train", str(text), "--out", str(tmp_path / "run"),
                             "--precision", "bf16", "--max-steps", "2"], capture_output=True, text=True,
                            env={**{k: v for k, v in os.environ.items() if k != isa.BF16_ENV},
                                 "CHARRNN_ISA": "avx2"})  # a forced unit would be refused first, as itself
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "precision bf16 is not available here" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_bf16_missing_names_the_reason():
    forced = isa.Isa("avx2", True, ("avx512", "avx2", "portable"))
    assert "avx2" in isa.bf16_missing(forced)
    plain = isa.Isa("avx512", False, ("avx512",), "x", "+avx512f,+avx2,+fma,-amx-tile,-amx-bf16,-avx512bf16")
    assert "neither AVX512-BF16 nor AMX-BF16" in isa.bf16_missing(plain)
    assert isa.bf16_missing(isa.Isa("avx512", False, ("avx512",), bf16="avx512bf16")) is None
    if MISSING is not None:
        with pytest.raises(CharrnnError, match="precision bf16 is not available"):
            isa.enable_bf16()


def test_precision_is_a_checked_training_setting():
    from charrnn.config import TrainConfig

    assert TrainConfig().precision == "float32"
    assert TrainConfig.from_dict({}).precision == "float32"  # checkpoints from before it trained in float32
    with pytest.raises(CharrnnError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError):
        Network(ModelConfig(vocab_size=5), Parameters(ModelConfig(vocab_size=5), np.float64), "bf16")
