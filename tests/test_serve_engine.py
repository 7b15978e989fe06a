"""The server's parts without HTTP: request fields to settings, stop strings left out
as OpenAI does, and the engine's queue, joins and leaves, driven a call at a time."""

import asyncio
import random
import time

import numpy as np
import pytest

from charrnn.config import ModelConfig, SampleConfig, settings_of
from charrnn.model import Parameters, init_params
from charrnn.sample import Stream, generate, sample_seed
from charrnn.serve.engine import Engine, Job, engine_threads
from charrnn.serve.openai import FIELDS, ChoiceText, RequestError, parse_completion
from charrnn.vocab import Vocab

# ----- request fields ------------------------------------------------------------------


def parse(**body):
    return parse_completion(body, "m.safetensors", max_length=4096, max_streams=64)


def test_fields_not_given_take_charrnns_defaults():
    req = parse(seed=1)
    defaults = SampleConfig()
    assert req.settings.replace(seed=None) == defaults.replace(length=500)
    assert req.settings.temperature == 0.8 and req.settings.top_k is None and not req.settings.argmax
    assert not req.stream and not req.echo
    assert parse_completion({}, "m", max_length=100, max_streams=64).settings.length == 100  # capped
    assert parse().settings.seed is not None  # drawn at random


def test_every_sampling_setting_is_a_request_field():
    """Settings added to SampleConfig later become request fields by themselves."""
    for name, s in settings_of(SampleConfig).items():
        field = FIELDS.get(name, name)
        value = {"int": 2, "float": 0.5, "flag": True, "text": "a", "chars": "a", "texts": ["a"]}[s.kind]
        value = {"prime": "ab", "dry_base": 2.0}.get(name, value)
        req = parse(**{field: value})
        got = getattr(req.settings, name)
        assert got == (tuple(value) if s.kind == "texts" else value), name


def test_openai_meanings_where_they_differ():
    assert parse(temperature=0).settings.argmax
    assert parse(temperature=0).settings.temperature == 0.8  # unused by argmax
    assert parse(stop="\n").settings.stop == ("\n",) and parse(stop=["a", "b"]).settings.stop == ("a", "b")
    beam = parse(temperature=0, beam=3).settings  # the most likely text: what beam search finds
    assert beam.beam == 3 and not beam.argmax
    with pytest.raises(RequestError, match="stop must be a string or a list of strings") as info:
        parse(stop=7)
    assert info.value.param == "stop"
    assert parse(stop=None).settings.stop == () and parse(top_k=None).settings.top_k is None
    assert parse(n=3, best_of=3).settings.num_samples == 3
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage
    with pytest.raises(RequestError, match="model 'x' does not exist") as info:
        parse_completion({"model": "x"}, "m", 10, 10)
    assert info.value.status == 404 and info.value.code == "model_not_found"


# ----- stop strings as OpenAI returns them ------------------------------------------------


def test_text_that_may_begin_a_stop_string_is_held_back_until_it_is_known():
    t = ChoiceText("", ["abc"])
    assert t.feed("xxa") == "xx"
    assert t.feed("b") == ""
    assert t.feed("d") == "abd"
    assert t.feed("xab") == "x"
    assert t.feed("c", ended=True, stop="abc") == ""
    assert t.generated == 9


def test_a_stop_string_that_begins_in_the_prompt_is_cut_from_the_generated_text_only():
    t = ChoiceText("ROMEO: a", ["abc"])
    assert t.feed("b") == ""  # "ab" may be the start of "abc"
    assert t.feed("c", ended=True, stop="abc") == ""
    t = ChoiceText("ROMEO: a", ["abc"])
    assert t.feed("bc", ended=True, stop="abc") == ""


def _charrnn_cut(prompt, generated, stops):
    """What charrnn generates with stops (the first stop to end in the generated
    text ends it, kept) and OpenAI's text (the stop's generated part left out)."""
    text = prompt + generated
    ends = [(text.find(s, max(0, len(prompt) - len(s) + 1)), i) for i, s in enumerate(stops)]
    ends = [(at + len(stops[i]), i) for at, i in ends if at >= 0]
    if not ends:
        return generated, None
    end, i = min(ends)
    kept = text[len(prompt):end]
    return kept[:len(kept) - min(len(stops[i]), len(kept))], stops[i]


def test_pieces_join_to_the_text_without_its_stop_whatever_the_cuts():
    rng = random.Random(5)
    for _ in range(2000):
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        prompt = "".join(rng.choice("abc") for _ in range(rng.randint(0, 4)))
        generated = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 30)))
        want, stop = _charrnn_cut(prompt, generated, stops)
        if stop is not None:  # the stream ended there: cut what it generated there
            text = prompt + generated
            end = min(text.find(s, max(0, len(prompt) - len(s) + 1)) + len(s) for s in stops
                      if text.find(s, max(0, len(prompt) - len(s) + 1)) >= 0)
            generated = text[len(prompt):end]
        t, out, pos = ChoiceText(prompt, stops), [], 0
        while pos < len(generated):
            step = rng.randint(1, 5)
            piece, pos = generated[pos:pos + step], pos + step
            out.append(t.feed(piece, ended=pos >= len(generated), stop=stop if pos >= len(generated) else None))
        if not generated:
            out.append(t.feed("", ended=True, stop=stop))
        assert "".join(out) == want, (prompt, generated, stops)
        # nothing given out is ever part of a stop string that has not ended yet
        assert "".join(out[:-1]) == want[:len("".join(out[:-1]))]


def _held_back(before, pending, stops):
    """The naive reference: how much of pending's end could still begin a stop string,
    trying every end of before + pending up to the longest stop but one."""
    text, width = before + pending, max(len(s) for s in stops) - 1
    for n in range(min(len(text), width), 0, -1):
        if any(s.startswith(text[-n:]) for s in stops):
            return min(n, len(pending))
    return 0


def test_what_is_held_back_is_the_naive_references_and_long_stops_cost_no_more():
    rng = random.Random(11)
    cases = [(["".join(rng.choice("ab") for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(1, 3))],
              "".join(rng.choice("ab") for _ in range(rng.randint(0, 9)))) for _ in range(400)]
    cases.append((["a" * 3000 + "b", "ab" * 700], "a" * 5000))  # quadratic for the naive reference per piece
    for stops, prompt in cases:
        t, given, held = ChoiceText(prompt, stops), "", ""
        for _ in range(rng.randint(1, 12)):
            piece = "".join(rng.choice("ab") for _ in range(rng.randint(0, 6)))
            if any(s in (prompt + given + held + piece)[max(0, len(prompt) - len(s) + 1):] for s in stops):
                break  # the engine would have ended the stream at a stop string
            want = _held_back(prompt + given, held + piece, stops)
            out = t.feed(piece)
            assert t.held == (held + piece)[len(held + piece) - want:] and out + t.held == held + piece
            given, held = given + out, t.held
    twins = ChoiceText("x", ["ab"]).copies(3)  # each choice holds back its own text
    assert twins[0].feed("a") == "" and twins[1].feed("c") == "c" and twins[2].feed("a") == ""
    assert twins[0].feed("c") == "ac" and twins[2].held == "a"


# ----- the engine ---------------------------------------------------------------------------


@pytest.fixture
def model():
    vocab = Vocab.from_chars("abcdefgh \n")
    cfg = ModelConfig(vocab_size=len(vocab), layers=2, hidden=8, embed=4)
    params = Parameters(cfg)
    init_params(params, np.random.default_rng(0))
    from charrnn.api import Model
    from charrnn.checkpoint import Checkpoint

    return Model(Checkpoint(cfg, vocab, params))


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def job_of(model, loop, n, seed, **settings):
    cfg = SampleConfig(seed=seed, **settings)
    return Job(loop, [Stream(model.checkpoint.vocab, cfg, sample_seed(seed, i + 1), i) for i in range(n)])


def texts_of(job):
    out = {}
    for u in job._items:
        out[u.index] = out.get(u.index, "") + u.text
    return [out.get(i, "") for i in range(job.rows)]


def test_requests_queue_in_order_beyond_max_streams_and_join_as_rows_free(model, loop):
    engine = Engine(model, max_streams=3, threads=1, block=4)
    a = job_of(model, loop, 2, 1, length=40, temperature=1.0, prime="ab")
    b = job_of(model, loop, 2, 2, length=10, temperature=0.7)
    c = job_of(model, loop, 1, 3, length=12, argmax=True, prime="c")
    for job in (a, b, c):
        engine.submit(job)
    engine.step()
    assert engine.active_streams == 2 and engine.queued == 2  # b needs 2 rows; c waits behind it
    steps = 1
    while not a.done:
        assert engine.queued == 2 and engine.active_streams == 2
        engine.step()
        steps += 1
    assert engine.queued == 2 and engine.active_streams == 0  # a left at the call it ended
    engine.step()  # b and c join, and are generated together
    assert engine.queued == 0 and engine.active_streams == 3
    while not (b.done and c.done):
        engine.step()
    assert engine.active_streams == 0 and steps == 10  # 40 characters, 4 a call
    vocab, net = model.checkpoint.vocab, model.network
    for job, (n, seed, settings) in ((a, (2, 1, dict(length=40, temperature=1.0, prime="ab"))),
                                     (b, (2, 2, dict(length=10, temperature=0.7))),
                                     (c, (1, 3, dict(length=12, argmax=True, prime="c")))):
        for i, text in enumerate(texts_of(job)):
            s = dict(settings)
            assert text == generate(net, vocab, s.pop("length"), s.pop("temperature", 1.0), s.pop("prime", ""),
                                    sample_seed(seed, i + 1), **s)


def test_a_cancelled_request_leaves_at_the_next_call(model, loop):
    engine = Engine(model, max_streams=4, threads=1, block=4)
    a, b, c = (job_of(model, loop, 2, s, length=1000, temperature=1.0) for s in (1, 2, 3))
    for job in (a, b, c):
        engine.submit(job)
    engine.step()
    assert engine.active_streams == 4 and engine.queued == 1
    engine.cancel(a)
    engine.cancel(c)  # still queued
    engine.step()
    assert a.done and c.done and engine.active_streams == 2 and engine.queued == 0
    assert engine.generated == 4 * 4 + 2 * 4


def test_max_tokens_zero_is_done_at_once_and_scores_run_between_calls(model, loop):
    from charrnn.evaluate import score_text, score_text_steps

    engine = Engine(model, max_streams=4, threads=1)
    empty = job_of(model, loop, 2, 1, length=0)
    ids = model.checkpoint.vocab.encode("abc defg hh\n" * 300)
    score = Job(loop, steps=lambda: score_text_steps(model.network, ids, model.end_id, model.lines))
    engine.submit(empty)
    engine.submit(score)
    engine.step()
    assert empty.done and texts_of(empty) == ["", ""] and all(u.ended for u in empty._items)
    while not score.done:
        engine.step()
    assert score.result.report() == score_text(model.network, ids, model.end_id, model.lines).report()


def test_engine_threads_leave_a_core_to_the_http_side():
    assert engine_threads(2) == 1 and engine_threads(1) == 1 and engine_threads(8) == 7


def test_an_idle_engine_blocks_and_stopping_fails_what_is_left(model, loop):
    engine = Engine(model, max_streams=4, threads=1)
    engine.start()
    assert engine.ready.wait(60)  # warmed up
    time.sleep(0.2)
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.1 * (time.monotonic() - wall)  # not spinning
    engine.stop()
    assert not engine.thread.is_alive()
    late = job_of(model, loop, 1, 1, length=5)
    engine.submit(late)
    assert late.done and late.error == "the server is shutting down"


def test_the_block_grows_while_calls_are_quick_and_never_falls_below_16(model):
    from charrnn.serve.engine import BLOCK, CALL_TIME, MAX_BLOCK

    engine = Engine(model, max_streams=64, threads=1)
    assert engine.block_size() == BLOCK  # nothing measured yet
    engine.batch.streams = [None]  # a batch of 1 (only its length is read)
    engine._step_time = (CALL_TIME / 40, 1)
    assert engine.block_size() == 40
    engine._step_time = (CALL_TIME / 1000, 1)
    assert engine.block_size() == MAX_BLOCK
    engine.batch.streams = [None] * 16  # grew since: the step time is scaled up with it
    engine._step_time = (CALL_TIME / 160, 1)
    assert engine.block_size() == BLOCK
    engine._step_time = (CALL_TIME / 4, 16)
    assert engine.block_size() == BLOCK
    assert Engine(model, max_streams=4, threads=1, block=3).block_size() == 3


def test_a_fault_in_a_call_fails_the_requests_under_way_and_the_engine_goes_on(model, loop):
    engine = Engine(model, max_streams=4, threads=1)
    engine.start()
    assert engine.ready.wait(60)
    original, calls = model.network.generate, []

    def faulty(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    model.network.generate = faulty
    try:
        hit = job_of(model, loop, 2, 1, length=50)
        engine.submit(hit)
        assert wait_until(lambda: hit.done)
        assert hit.error_code == "internal_error" and "RuntimeError: boom" in hit.error
        later = job_of(model, loop, 1, 2, length=30, temperature=1.0)
        engine.submit(later)
        assert wait_until(lambda: later.done) and later.error is None
        assert texts_of(later) == [generate(model.network, model.checkpoint.vocab, 30, 1.0, "", 2)]
        assert engine.active_streams == 0
    finally:
        model.network.generate = original
        engine.stop()


def wait_until(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture(scope="module")
def line_model(tmp_path_factory):
    """A small line-mode model of names."""
    import charrnn
    from conftest import ROOT

    d = tmp_path_factory.mktemp("serve-lines")
    names = (ROOT / "data" / "first-names.txt").read_text().split("\n")[::4]
    (d / "names.txt").write_text("\n".join(names))
    return charrnn.train(d / "names.txt", d / "run", lines=True, layers=1, hidden=32, embed=8, batch_size=16,
                         max_steps=150, progress=False).load()


def test_a_line_mode_model_answers_single_lines_and_unique_new_ones(line_model, loop):
    from charrnn.sample import Stream, UniqueSampler

    engine = Engine(line_model, max_streams=8, threads=1)
    cfg = SampleConfig(length=30, seed=3, num_samples=5, temperature=1.0)
    job = Job(loop, [Stream(line_model.checkpoint.vocab, cfg, sample_seed(3, i + 1), i, True) for i in range(5)])
    engine.submit(job)
    while not job.done:
        engine.step()
    assert texts_of(job) == [t for t in line_model.generate_many(5, length=30, seed=3, temperature=1.0)]
    assert all("\n" not in t for t in texts_of(job))
    unique = cfg.replace(unique=True, num_samples=6)
    sampler = line_model.sampler(unique)
    assert isinstance(sampler, UniqueSampler)
    found = Job(loop, steps=sampler.prepare_steps)
    engine.submit(found)
    while not found.done:
        engine.step()
    assert [line_model.checkpoint.vocab.decode(ids) for ids in sampler.found_ids] == line_model.generate_many(
        6, length=30, seed=3, temperature=1.0, unique=True)


def test_a_long_prompt_is_read_a_chunk_a_call_while_later_requests_go_ahead(model, loop):
    from charrnn.sample import PRIME_CHUNK

    engine = Engine(model, max_streams=4, threads=1, block=4)
    prime = "".join(random.Random(2).choice("abcdefgh \n") for _ in range(3 * PRIME_CHUNK + 5))
    long = job_of(model, loop, 2, 1, length=12, temperature=1.0, prime=prime)
    short = job_of(model, loop, 1, 2, length=8, temperature=1.0, prime="ab")
    engine.submit(long)
    engine.submit(short)
    engine.step()  # the short one joins; the long one's first chunk is read
    assert engine.active_streams == 1 and engine.queued == 1 and long.priming is not None
    calls = 1
    while not long.done:
        engine.step()
        calls += 1
    assert short.done and calls == 4 + 12 // 4  # 4 chunks (the last to end the reading), then 3 calls
    vocab, net = model.checkpoint.vocab, model.network
    assert texts_of(long) == [generate(net, vocab, 12, 1.0, prime, sample_seed(1, i + 1)) for i in range(2)]
    assert texts_of(short) == [generate(net, vocab, 8, 1.0, "ab", sample_seed(2, 1))]


def test_unique_lines_ended_by_a_stop_string_leave_it_out_and_say_so(line_model):
    """Through the app in-process (Starlette's TestClient): a unique line that a stop
    string ended is reported as "stop", without the stop, as every other choice is."""
    from starlette.testclient import TestClient

    from charrnn.config import ServeConfig
    from charrnn.serve.app import Server, create_app

    app = create_app(Server(line_model, ServeConfig(), Engine(line_model, max_streams=8, threads=1), "names"))
    with TestClient(app) as client:
        response = client.post("/v1/completions", json=dict(n=5, unique=True, stop=["a"], max_tokens=30, seed=3,
                                                             temperature=1.0))
    assert response.status_code == 200, response.text
    lines = line_model.generate_many(5, length=30, seed=3, temperature=1.0, unique=True, stop=["a"])
    choices = response.json()["choices"]
    assert len(choices) == 5 and any(line.endswith("a") for line in lines)
    for choice, line in zip(choices, lines):
        stopped = line.endswith("a")
        assert choice["finish_reason"] == ("stop" if stopped else "length")
        assert choice["text"] == (line[:-1] if stopped else line)


def test_unique_lines_read_a_long_prime_once_a_chunk_a_step(line_model, monkeypatch):
    """A server runs the search for unique lines a step at a time: a long prime is read
    a chunk a step, once for every round of draws, and each line is still what its
    seed gives alone."""
    from charrnn.sample import PRIME_CHUNK

    letters = [c for c in line_model.checkpoint.vocab.chars if c.isalpha()]
    prime = "".join(random.Random(1).choice(letters) for _ in range(2 * PRIME_CHUNK + 10))
    cfg = SampleConfig(length=10, seed=3, num_samples=3, temperature=1.0, prime=prime, unique=True)
    net, passes = line_model.network, []
    real = net.forward
    monkeypatch.setattr(net, "forward", lambda ids, *a, **k: (passes.append(ids.shape[0]), real(ids, *a, **k))[1])
    with monkeypatch.context() as m:
        m.setattr(line_model, "source", lambda line: "train")  # no line is new: every round of draws runs
        sampler = line_model.sampler(cfg)
        steps = sum(1 for _ in sampler.prepare_steps())
    assert sampler.drawn == 150 and sampler.shortfall == 3  # 50 draws a line wanted, in rounds of 14
    assert passes == [PRIME_CHUNK, PRIME_CHUNK, 10]  # the start marker and 2 * PRIME_CHUNK + 10, all but the last
    assert steps >= 2 + 11  # two between the prime's chunks, then at least one for each round
    sampler = line_model.sampler(cfg)
    sampler.prepare()
    monkeypatch.setattr(net, "forward", real)
    assert len(sampler.seeds) == 3
    decode = line_model.checkpoint.vocab.decode
    for seed, ids in zip(sampler.seeds, sampler.found_ids):
        assert line_model.generate(prime, length=10, seed=seed, temperature=1.0) == prime + decode(ids)
