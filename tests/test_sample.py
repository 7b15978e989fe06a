import numpy as np
import pytest

from charrnn.errors import CharrnnError
from charrnn.config import ModelConfig, SampleConfig
from charrnn.model import Parameters, init_params
from charrnn.network import Network
from charrnn.sample import generate
from charrnn.vocab import Vocab


@pytest.fixture
def model():
    vocab = Vocab.from_chars("abcdefgh \n")
    cfg = ModelConfig(vocab_size=len(vocab), layers=2, hidden=8, embed=4)
    params = Parameters(cfg)
    init_params(params, np.random.default_rng(0))
    return Network(cfg, params), vocab


def test_same_seed_same_text_other_seed_other_text(model):
    net, vocab = model
    a = generate(net, vocab, 200, 1.0, "abc", seed=5)
    assert a == generate(net, vocab, 200, 1.0, "abc", seed=5)
    assert a != generate(net, vocab, 200, 1.0, "abc", seed=6)
    assert len(a) == 200 and set(a) <= set(vocab.chars)


def test_exact_length_with_and_without_prime(model):
    net, vocab = model
    for prime in ("", "a", "abc def"):
        for n in (0, 1, 17):
            assert len(generate(net, vocab, n, 0.8, prime, seed=1)) == n


def test_argmax_is_deterministic_without_a_seed(model):
    net, vocab = model
    assert generate(net, vocab, 50, argmax=True, seed=1) == generate(net, vocab, 50, argmax=True, seed=2)


def test_streaming_callback_sees_every_character(model):
    net, vocab = model
    seen = []
    text = generate(net, vocab, 30, prime="ab", seed=3, on_char=seen.append)
    assert "".join(seen) == text


def test_unknown_prime_characters_are_named(model):
    net, vocab = model
    with pytest.raises(CharrnnError, match="'z'"):
        generate(net, vocab, 10, prime="az")


def test_vocabulary_without_newline(model):
    net, _ = model
    vocab = Vocab.from_chars("abcdefghij")
    text = generate(net, vocab, 12, seed=4)
    assert len(text) == 12


# ----- many samples, seeds, stops, printing ---------------------------------------------

import io  # noqa: E402
import json  # noqa: E402

from charrnn.sample import BatchSampler, generate_many, sample_seed, write_samples  # noqa: E402


@pytest.mark.parametrize("decoding", [SampleConfig(temperature=0.9), SampleConfig(temperature=1.3, top_k=3, top_p=0.8),
                                      SampleConfig(argmax=True)])
@pytest.mark.parametrize("prime", ["", "a b\nc"])
def test_each_sample_of_a_batch_is_that_sample_alone_with_its_own_seed(model, decoding, prime):
    net, vocab = model
    stops = ["e ", "hh"]  # rows end at different steps and leave the batch
    batch = generate_many(net, vocab, decoding.replace(length=60, seed=11, num_samples=5, prime=prime, stop=stops))
    for k, text in enumerate(batch, start=1):
        alone = generate(net, vocab, 60, decoding.temperature, prime, sample_seed(11, k), decoding.argmax,
                         top_k=decoding.top_k, top_p=decoding.top_p, stops=stops)
        assert text == alone
    assert generate_many(net, vocab, decoding.replace(length=60, seed=11, num_samples=5, prime=prime, stop=stops)) == batch


def test_sample_seeds_sample_1_is_the_seed_others_are_spread():
    assert sample_seed(7, 1) == 7
    seeds = [sample_seed(s, k) for s in (7, 8) for k in range(2, 50)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**53 for s in seeds)
    assert sample_seed(7, 2) == int(np.random.SeedSequence([7, 2]).generate_state(1, np.uint64)[0] >> np.uint64(11))


def test_the_block_size_does_not_change_a_sample(model, monkeypatch):
    net, vocab = model
    whole = generate_many(net, vocab, SampleConfig(temperature=1.0, length=40, seed=3, num_samples=3, stop=["ab"]))
    for block in (1, 3):  # stops and draws now straddle blocks
        monkeypatch.setattr("charrnn.sample.BLOCK", block)
        assert generate_many(net, vocab, SampleConfig(temperature=1.0, length=40, seed=3, num_samples=3, stop=["ab"])) == whole


def test_random_start_without_newline_is_reproduced_alone(model):
    net, _ = model
    vocab = Vocab.from_chars("abcdefghij")
    batch = generate_many(net, vocab, SampleConfig(temperature=1.0, length=15, seed=2, num_samples=3))
    assert batch[2] == generate(net, vocab, 15, seed=sample_seed(2, 3))


def test_stop_ends_at_the_first_occurrence_and_keeps_it(model):
    net, vocab = model
    full = generate(net, vocab, 300, 1.0, "ab", seed=9)
    stop = full[40:42]
    end = full.index(stop) + len(stop)
    assert generate(net, vocab, 300, 1.0, "ab", seed=9, stops=[stop]) == full[:end]
    # Another stop that occurs later changes nothing; the earliest of several wins.
    later = full[end + 10:end + 14]
    if later not in full[:end]:
        assert generate(net, vocab, 300, 1.0, "ab", seed=9, stops=[later, stop]) == full[:end]


def test_a_stop_may_begin_in_the_prime_but_must_end_in_generated_text(model):
    net, vocab = model
    full = generate(net, vocab, 50, 1.0, "ab", seed=4)
    assert generate(net, vocab, 50, 1.0, "ab", seed=4, stops=["b" + full[0]]) == full[0]
    expected = full[:full.index("ab") + 2] if "ab" in full else full  # not at the start: "ab" is the prime
    assert generate(net, vocab, 50, 1.0, "ab", seed=4, stops=["ab"]) == expected


def test_stops_the_model_cannot_produce_are_refused(model):
    net, vocab = model
    with pytest.raises(CharrnnError, match="'z'"):
        BatchSampler(net, vocab, SampleConfig(temperature=1.0, length=10, seed=0, stop=["az"]))
    with pytest.raises(CharrnnError, match="empty"):
        BatchSampler(net, vocab, SampleConfig(temperature=1.0, length=10, seed=0, stop=[""]))


class Recorder(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushed = []  # the text written at each flush

    def flush(self):
        self.flushed.append(self.getvalue())


def test_streaming_writes_and_flushes_every_character(model):
    net, vocab = model
    out = Recorder()
    write_samples(BatchSampler(net, vocab, SampleConfig(temperature=1.0, length=20, seed=5, prime="ab")), out, stream=True)
    text = "ab" + generate(net, vocab, 20, prime="ab", seed=5) + "\n"
    assert out.getvalue() == text
    # The prime, then each character (the last one with the newline), then the close.
    assert out.flushed == [text[:i] for i in range(2, 22)] + [text, text]


def test_without_streaming_output_is_flushed_once(model):
    net, vocab = model
    out = Recorder()
    write_samples(BatchSampler(net, vocab, SampleConfig(temperature=1.0, length=20, seed=5)), out)
    assert out.flushed == [out.getvalue()]


def test_several_samples_print_in_order_each_with_a_header(model):
    net, vocab = model
    out = Recorder()
    write_samples(BatchSampler(net, vocab, SampleConfig(temperature=1.0, length=30, seed=5, num_samples=3, prime="a", stop=["b"])), out, stream=True)
    texts = generate_many(net, vocab, SampleConfig(temperature=1.0, length=30, seed=5, num_samples=3, prime="a", stop=["b"]))
    expected = "\n".join(f"--- sample {k} of 3, seed {sample_seed(5, k)} ---\na{t}\n" for k, t in enumerate(texts, 1))
    assert out.getvalue() == expected
    first = f"--- sample 1 of 3, seed 5 ---\na{texts[0]}"
    assert any(t.startswith(first[:-1]) and not t.startswith(first) for t in out.flushed)  # sample 1 streamed


def test_json_lines_hold_text_with_prime_seed_and_settings(model):
    net, vocab = model
    out = io.StringIO()
    write_samples(BatchSampler(net, vocab, SampleConfig(temperature=1.0, length=25, seed=8, num_samples=2, prime="ab", stop=["c"])), out, settings={"x": 1})
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    texts = generate_many(net, vocab, SampleConfig(temperature=1.0, length=25, seed=8, num_samples=2, prime="ab", stop=["c"]))
    for k, (row, text) in enumerate(zip(rows, texts), start=1):
        assert row["sample"] == k and row["seed"] == sample_seed(8, k) and row["settings"] == {"x": 1}
        assert row["text"] == "ab" + text and row["generated"] == len(text)
        assert row["stop"] == ("c" if text.endswith("c") else None)


def test_ctrl_c_keeps_what_was_printed_and_ends_the_line(model, monkeypatch):
    net, vocab = model
    calls = []
    original = type(net).generate

    def generate_then_interrupt(self, *args, **kwargs):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(net), "generate", generate_then_interrupt)
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        write_samples(BatchSampler(net, vocab, SampleConfig(temperature=1.0, length=50, seed=5, prime="ab"), block=1), out)
    monkeypatch.undo()
    assert out.getvalue() == "ab" + generate(net, vocab, 6, prime="ab", seed=5) + "\n"


def test_a_stop_may_span_a_whole_prime_shorter_than_the_stop(model):
    """The carried tail keeps all of a prime shorter than the longest stop (a prime
    of 4 characters and a stop of 6 once kept only its last character)."""
    net, vocab = model
    full = generate(net, vocab, 50, 1.0, "abcd", seed=4)
    assert generate(net, vocab, 50, 1.0, "abcd", seed=4, stops=["abcd" + full[:2]]) == full[:2]


def test_streams_that_join_a_running_batch_with_their_own_settings_give_what_they_give_alone(model):
    """What a server does: streams with different settings join and leave between
    engine calls; each gives exactly its text alone (from generate, block 64)."""
    from charrnn.sample import Batch, Stream

    net, vocab = model
    configs = [SampleConfig(temperature=1.0, length=40, prime="ab", seed=1),
               SampleConfig(temperature=0.5, top_k=3, length=25, seed=2),
               SampleConfig(argmax=True, length=30, prime="c", seed=3),
               SampleConfig(temperature=1.3, top_p=0.8, length=50, prime="a b", stop=["hh", "e "], seed=4)]
    batch, texts = Batch(net, vocab), {i: [] for i in range(len(configs))}

    def record(block):
        for s, ids, n in zip(block.streams, block.ids, block.counts):
            texts[s.index].extend(ids[:n].tolist())

    for step in range(30):
        if step < len(configs):  # one more joins before each of the first calls
            first = batch.add([Stream(vocab, configs[step], configs[step].seed, step)])
            if first is not None:
                record(first)
        if len(batch):
            record(batch.advance(3 + step % 4))
    for i, cfg in enumerate(configs):
        alone = generate(net, vocab, cfg.length, cfg.temperature, cfg.prime, cfg.seed, cfg.argmax, top_k=cfg.top_k,
                         top_p=cfg.top_p, stops=cfg.stop)
        assert vocab.decode(texts[i]) == alone, i


# ----- samplers: min-p, bans, repetition control, beam search -----------------------------

import itertools  # noqa: E402

from charrnn.sample import Stream, beam_search  # noqa: E402


def repeats(text: str, n: int = 8) -> int:
    """How many of text's n-grams occurred before in it."""
    seen, count = set(), 0
    for i in range(len(text) - n + 1):
        count += text[i:i + n] in seen
        seen.add(text[i:i + n])
    return count


@pytest.mark.parametrize("base", [dict(temperature=1.0), dict(argmax=True), dict(temperature=0.7, top_k=4, min_p=0.1)])
def test_dry_with_multiplier_zero_changes_nothing(model, base):
    net, vocab = model
    cfg = SampleConfig(length=120, seed=5, num_samples=3, prime="ab", **base)
    assert generate_many(net, vocab, cfg) == generate_many(
        net, vocab, cfg.replace(dry_multiplier=0.0, dry_base=3.0, dry_allowed_length=1, dry_last_n=7))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained briefly on Shakespeare: at a low temperature it falls into
    loops, which repetition control is for."""
    import charrnn
    from conftest import SHAKESPEARE

    d = tmp_path_factory.mktemp("trained")
    (d / "corpus.txt").write_text(SHAKESPEARE.read_text()[:20000])
    return charrnn.train(d / "corpus.txt", d / "run", progress=False, layers=1, hidden=32, embed=8, batch_size=8,
                         seq_len=32, max_steps=150, eval_every=150).load()


def test_dry_repeats_fewer_long_substrings_at_low_temperature(trained):
    for seed in range(3):
        plain = trained.generate("ROMEO:", length=400, temperature=0.2, seed=seed)
        dry = trained.generate("ROMEO:", length=400, temperature=0.2, seed=seed, dry_multiplier=1.0)
        assert repeats(dry) < repeats(plain), (seed, plain[:80], dry[:80])


def test_every_sampler_is_reproducible_from_its_seed_alone_or_in_a_batch(model):
    net, vocab = model
    cfg = SampleConfig(length=150, temperature=1.1, top_k=6, top_p=0.9, min_p=0.05, ban="h", dry_multiplier=0.8,
                       dry_allowed_length=3, dry_last_n=50, seed=9, num_samples=4, prime="a ")
    batch = generate_many(net, vocab, cfg)
    assert batch == generate_many(net, vocab, cfg)
    for k, text in enumerate(batch, start=1):
        assert "h" not in text
        assert generate_many(net, vocab, cfg.replace(num_samples=1, seed=sample_seed(9, k))) == [text]


def test_bans_hold_for_argmax_and_unknown_or_total_bans_are_refused(model):
    net, vocab = model
    greedy = generate_many(net, vocab, SampleConfig(length=100, argmax=True, prime="a", seed=0))[0]
    banned = sorted(set(greedy))[:2]
    text = generate_many(net, vocab, SampleConfig(length=100, argmax=True, prime="a", ban="".join(banned), seed=0))[0]
    assert not set(text) & set(banned)
    with pytest.raises(CharrnnError, match="'z'"):
        generate_many(net, vocab, SampleConfig(length=5, seed=0, ban="az"))
    with pytest.raises(CharrnnError, match="every character"):
        generate_many(net, vocab, SampleConfig(length=5, seed=0, ban="".join(vocab.chars)))


@pytest.mark.parametrize("stops", [(), ("e ",)])
def test_beam_of_one_is_argmax(model, stops):
    net, vocab = model
    cfg = SampleConfig(length=60, prime="ab", stop=stops, seed=0)
    assert generate_many(net, vocab, cfg.replace(beam=1)) == generate_many(net, vocab, cfg.replace(argmax=True))


def log_prob(net, vocab, prime, text):
    """The model's total log-probability of text after prime, one step at a time."""
    from charrnn.model import RecurrentState

    state = RecurrentState.zeros(net.cfg, 1)
    ids = vocab.encode(prime + text).astype(np.int64)
    total = 0.0
    for i in range(len(ids) - 1):
        logits, state = net.step(ids[i:i + 1], state)
        row = logits[0].astype(np.float64)
        if i >= len(prime) - 1:
            total += row[ids[i + 1]] - row.max() - np.log(np.exp(row - row.max()).sum())
    return total


def test_a_beam_wide_enough_to_keep_every_prefix_finds_the_exhaustive_optimum():
    from charrnn.config import ModelConfig

    vocab = Vocab.from_chars("abc")
    for seed in range(3):
        cfg = ModelConfig(vocab_size=3, layers=1, hidden=8, embed=4)
        params = Parameters(cfg)
        init_params(params, np.random.default_rng(seed))
        net = Network(cfg, params)
        best = max(("".join(t) for t in itertools.product("abc", repeat=4)), key=lambda t: log_prob(net, vocab, "b", t))
        found = vocab.decode(beam_search(net, vocab, Stream(vocab, SampleConfig(length=4, prime="b", beam=27), 0)))
        assert found == best
        assert log_prob(net, vocab, "b", found) >= log_prob(net, vocab, "b", vocab.decode(
            beam_search(net, vocab, Stream(vocab, SampleConfig(length=4, prime="b", beam=1), 0))))


def test_beam_refuses_the_settings_it_decides_itself(model):
    with pytest.raises(CharrnnError, match="temperature does not apply to beam search"):
        SampleConfig.from_given({"beam": 3, "temperature": 0.5})
    with pytest.raises(CharrnnError, match="num_samples does not apply"):
        SampleConfig.from_given({"beam": 3, "num_samples": 2})
    assert SampleConfig.from_given({"beam": 3, "stop": ["x"], "ban": "a", "seed": 1}).beam == 3


# ----- long primes, wide repetition windows -----------------------------------------------


def test_a_long_prime_is_read_a_chunk_at_a_time_as_it_would_be_whole(model):
    from charrnn.model import RecurrentState
    from charrnn.sample import PRIME_CHUNK, prime_state, prime_steps

    net, vocab = model
    ids = np.random.default_rng(3).integers(len(vocab), size=2 * PRIME_CHUNK + 38)
    _, whole = net.forward(ids[:-1].reshape(-1, 1), RecurrentState.zeros(net.cfg, 1))
    steps, chunks = prime_steps(net, ids), 0
    for _ in steps:
        chunks += 1
    assert chunks == 2  # between 3 chunks: 2 * PRIME_CHUNK + 37 characters (the last is the first step's)
    chunked = prime_state(net, ids)
    np.testing.assert_allclose(chunked.h, whole.h, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chunked.c, whole.c, rtol=0, atol=1e-6)
    prime = vocab.decode(ids)
    text = generate(net, vocab, 40, 1.0, prime, seed=4)
    assert len(text) == 40 and text == generate(net, vocab, 40, 1.0, prime, seed=4)


def test_a_repetition_window_wider_than_the_text_costs_nothing_and_changes_nothing(model):
    """dry_last_n beyond all a sample will ever read (prime, a first character and
    length) reads all of it: 10**12 gives the text of 5000, without 16 TB of history."""
    net, vocab = model
    cfg = SampleConfig(length=80, seed=2, num_samples=3, prime="abc abc", dry_multiplier=0.8, dry_allowed_length=2)
    wide = generate_many(net, vocab, cfg.replace(dry_last_n=10**12))
    assert wide == generate_many(net, vocab, cfg.replace(dry_last_n=5000))
    assert wide != generate_many(net, vocab, cfg.replace(dry_last_n=3))


def test_beam_search_without_a_prime_on_a_vocabulary_without_newline_is_refused_at_once():
    """Refused when the sample is set up, not when it first runs (a server answers 400
    there, rather than failing every request under way)."""
    vocab = Vocab.from_chars("abcdefghij")
    with pytest.raises(CharrnnError, match="needs a"):
        Stream(vocab, SampleConfig(beam=2, length=5, seed=0), 0)
    Stream(vocab, SampleConfig(beam=2, length=5, seed=0, prime="a"), 0)
