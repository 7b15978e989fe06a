"""`charrnn serve` through a real uvicorn: OpenAI's completion API (streamed and not),
the same text as `charrnn sample` and Model.generate, concurrency, bad input,
disconnects, metrics, scoring, and OpenAI's own client. One server for the module."""

import json
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from serving import ServerProcess, events, expected, httpx, metrics, stream_texts, tiny_checkpoint, wait_for

import charrnn
from charrnn.cli import cli
from charrnn.sample import sample_seed

MAX_LENGTH = 5_000_000  # a request that long runs for many seconds: it can be stopped mid-way


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def model(checkpoint):
    return charrnn.load(checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint):
    with ServerProcess(checkpoint, "--max-length", MAX_LENGTH) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def complete(client, **body):
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def complete_streamed(client, **body):
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = events(response)
    assert chunks[-1] == "[DONE]" and all(c != "[DONE]" for c in chunks[:-1])
    return chunks


def test_health_models_and_the_playground(client, server):
    assert client.get("/health").json() == {"status": "ok", "api_key_required": False}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["best.safetensors"]
    assert client.get("/v1/models/best.safetensors").json()["id"] == "best.safetensors"
    other = client.get("/v1/models/gpt-4")
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # one self-contained page: nothing loaded from elsewhere
    assert '<link rel="icon" href="data:,">' in page.text
    assert "<script src" not in page.text and "stylesheet" not in page.text
    assert "http://" not in page.text and "https://" not in page.text


def test_same_seed_same_text_as_generate_and_charrnn_sample(client, model, checkpoint):
    body = dict(prompt="ROMEO:", max_tokens=120, seed=7, temperature=1.1, top_p=0.9, top_k=20)
    answer = complete(client, **body)
    text, finish = expected(model, "ROMEO:", length=120, seed=7, temperature=1.1, top_p=0.9, top_k=20)
    choice = answer["choices"][0]
    assert choice["text"] == text and choice["finish_reason"] == finish == "length"
    assert answer["object"] == "text_completion" and answer["model"] == "best.safetensors"
    assert answer["id"].startswith("cmpl-") and isinstance(answer["created"], int) and answer["seed"] == 7
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 120, "total_tokens": 126}
    assert complete(client, **body)["choices"][0]["text"] == text  # same seed, same text
    printed = CliRunner().invoke(cli, ["sample", str(checkpoint), "--prime", "ROMEO:", "-n", "120", "--seed", "7",
                                       "-t", "1.1", "--top-p", "0.9", "-k", "20"]).stdout
    assert printed == "ROMEO:" + text + "\n"


def test_defaults_are_charrnns(client, model):
    answer = complete(client, prompt="A", seed=3)  # temperature 0.8, 500 characters
    assert answer["choices"][0]["text"] == expected(model, "A", seed=3)[0]
    assert len(answer["choices"][0]["text"]) == 500


def test_streamed_text_equals_the_whole_answer(client):
    body = dict(prompt="First", max_tokens=300, seed=11, n=3, stop=["e ", "\n\n"], temperature=1.0)
    whole = complete(client, **body)
    chunks = complete_streamed(client, **body)
    texts, finish = stream_texts(chunks, 3)
    assert texts == [c["text"] for c in whole["choices"]]
    assert finish == [c["finish_reason"] for c in whole["choices"]]
    for c in chunks[:-1]:
        assert c["object"] == "text_completion" and c["id"] == chunks[0]["id"] and c["model"] == "best.safetensors"


def test_a_stream_can_end_with_the_usage(client):
    chunks = complete_streamed(client, prompt="AB", max_tokens=30, n=2, seed=1,
                               stream_options={"include_usage": True})
    last = chunks[-2]
    assert last["choices"] == [] and last["usage"] == {"prompt_tokens": 2, "completion_tokens": 60,
                                                       "total_tokens": 62}
    assert all("usage" not in c for c in chunks[:-2])


def test_n_choices_are_the_samples_of_num_samples(client, model):
    answer = complete(client, prompt="To", max_tokens=80, seed=5, n=4, temperature=1.0)
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3]
    for i, choice in enumerate(answer["choices"]):
        assert choice["text"] == expected(model, "To", length=80, seed=sample_seed(5, i + 1), temperature=1.0)[0]
    assert answer["usage"]["completion_tokens"] == 4 * 80 and answer["usage"]["prompt_tokens"] == 2


def test_stop_strings_are_left_out_and_finish_the_choice(client, model):
    full = model.generate("ab", length=300, seed=9, temperature=1.0)[2:]
    stop = full[60:62]  # occurs there, or earlier
    settings = dict(prompt="ab", max_tokens=300, seed=9, temperature=1.0)
    for body_stop in (stop, [stop, "zzz"]):
        answer = complete(client, **settings, stop=body_stop)
        stops = [body_stop] if isinstance(body_stop, str) else body_stop
        text, finish = expected(model, "ab", stops, length=300, seed=9, temperature=1.0)
        choice = answer["choices"][0]
        assert finish == "stop" and choice["finish_reason"] == "stop" and choice["text"] == text
        assert text == full[:max(0, ("ab" + full).index(stop) - 2)]  # without the stop string
        assert stream_texts(complete_streamed(client, **settings, stop=body_stop))[0] == [text]
    # charrnn keeps it: the command line and the Python API end with it
    assert model.generate("ab", length=300, seed=9, temperature=1.0, stop=[stop]).endswith(stop)


def test_echo_puts_the_prompt_first(client, model):
    text, _ = expected(model, "ROMEO:", length=40, seed=2)
    assert complete(client, prompt="ROMEO:", max_tokens=40, seed=2, echo=True)["choices"][0]["text"] == "ROMEO:" + text
    chunks = complete_streamed(client, prompt="ROMEO:", max_tokens=40, seed=2, echo=True)
    assert chunks[0]["choices"][0]["text"] == "ROMEO:" and stream_texts(chunks)[0] == ["ROMEO:" + text]


def test_temperature_zero_is_argmax(client, model):
    a = complete(client, prompt="The", max_tokens=60, temperature=0)["choices"][0]["text"]
    b = complete(client, prompt="The", max_tokens=60, argmax=True, seed=4)["choices"][0]["text"]
    assert a == b == model.generate("The", length=60, argmax=True)[3:]


def test_beam_search_answers_whole_and_refuses_to_stream(client, model):
    text = model.generate("The", length=40, beam=3, stop=["e "])
    answer = complete(client, prompt="The", max_tokens=40, beam=3, stop=["e "])["choices"][0]
    assert "The" + answer["text"] + ("e " if answer["finish_reason"] == "stop" else "") == text
    streamed = client.post("/v1/completions", json={"prompt": "The", "beam": 3, "stream": True})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
    clash = client.post("/v1/completions", json={"prompt": "The", "beam": 3, "top_k": 4})
    assert clash.status_code == 400 and clash.json()["error"]["param"] == "top_k"
    assert complete(client, prompt="T", max_tokens=5)["choices"][0]["text"]  # the server goes on


def test_a_long_prompt_and_a_repetition_window_wider_than_any_text(client, model):
    """A prompt of a few chunks is read between engine calls; dry_last_n 10**12 reads
    all there is, in memory for what there is: the same text as Model.generate."""
    prompt = model.generate("A", length=3000, seed=1, temperature=1.0)
    settings = dict(seed=5, temperature=1.0, dry_multiplier=0.8, dry_last_n=10**12)
    answer = complete(client, prompt=prompt, max_tokens=60, **settings)
    assert answer["choices"][0]["text"] == expected(model, prompt, length=60, **settings)[0]


def test_without_a_seed_one_is_drawn_and_reported(client, model):
    answers = [complete(client, prompt="I", max_tokens=50) for _ in range(2)]
    assert answers[0]["seed"] != answers[1]["seed"]
    for answer in answers:
        assert answer["choices"][0]["text"] == expected(model, "I", length=50, seed=answer["seed"])[0]


def test_max_tokens_zero_and_a_random_start(client):
    answer = complete(client, prompt="A", max_tokens=0, seed=1)
    assert answer["choices"][0]["text"] == "" and answer["choices"][0]["finish_reason"] == "length"
    assert stream_texts(complete_streamed(client, max_tokens=0, n=2), 2) == (["", ""], ["length", "length"])


BAD = [  # (body or raw bytes, status, param, words in the message)
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    (b'{"max_tokens": NaN}', 400, None, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, None, "nests too deeply"),
    ({"prompt": 5}, 400, "prompt", "prompt must be a string"),
    ({"max_tokens": "ten"}, 400, "max_tokens", "max_tokens must be"),
    ({"max_tokens": -1}, 400, "max_tokens", "max_tokens must be a non-negative integer"),
    ({"max_tokens": MAX_LENGTH + 1}, 400, "max_tokens", "at most"),
    ({"temperature": -0.5}, 400, "temperature", "temperature must be"),
    ({"temperature": "hot"}, 400, "temperature", "temperature must be"),
    ({"top_p": 1.5}, 400, "top_p", "top_p must be a number in (0, 1]"),
    ({"top_k": 0}, 400, "top_k", "top_k must be a positive integer"),
    ({"n": 0}, 400, "n", "n must be a positive integer"),
    ({"n": 65}, 400, "n", "n must be at most 64"),
    ({"seed": -3}, 400, "seed", "seed must be"),
    ({"argmax": "yes"}, 400, "argmax", "argmax must be"),
    ({"stop": 7}, 400, "stop", "stop must be"),
    ({"stop": [""]}, 400, "stop", "stop must not be empty"),
    ({"stop": ["\u2192"]}, 400, "stop", "can never occur"),
    ({"prompt": "caf\u00e9 \u2192"}, 400, "prompt", "prompt has characters not in the model's vocabulary"),
    ({"stream": "yes"}, 400, "stream", "stream must be true or false"),
    ({"echo": 1}, 400, "echo", "echo must be true or false"),
    ({"temprature": 0.5}, 400, "temprature", "did you mean temperature"),
    ({"length": 5}, 400, "length", "max_tokens"),
    ({"logprobs": 3}, 400, "logprobs", "not supported"),
    ({"model": "gpt-4"}, 404, "model", "does not exist"),
    ({"model": 3}, 400, "model", "model must be a string"),
]


@pytest.mark.parametrize("body,status,param,words", BAD, ids=[str(b[0])[:40] for b in BAD])
def test_bad_requests_get_openais_error_shape_and_the_server_goes_on(client, body, status, param, words):
    if isinstance(body, bytes):
        response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/v1/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert "\ue000" not in error["message"] and "--" not in error["message"].replace("--max", "")
    assert client.get("/health").status_code == 200


def test_oversized_bodies_unknown_routes_and_methods(client):
    big = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
    response = client.post("/v1/completions", content=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert client.post("/v1/score", content=big).status_code == 413
    assert client.get("/v1/nothing").status_code == 404 and "error" in client.get("/v1/nothing").json()
    response = client.get("/v1/completions")
    assert response.status_code == 405 and "error" in response.json()
    assert complete(client, prompt="A", max_tokens=5)["choices"][0]["text"]  # still serving


def test_one_client_or_sixteen_together_give_the_same_text(server, model):
    bodies = [dict(prompt=["", "A", "ROMEO:", "To be"][i % 4], max_tokens=150 + 37 * i, seed=100 + i,
                   temperature=[0.5, 0.8, 1.0, 1.3][i % 4], top_k=[None, 5][i % 2], top_p=[None, 0.9, 0.5][i % 3],
                   stop=[[], ["e "], ["\n\n", "th"]][i % 3], n=1 + i % 3, stream=i % 2 == 0)
              for i in range(16)]
    bodies = [{k: v for k, v in b.items() if v is not None} for b in bodies]

    def run(body, out, i):
        with httpx.Client(base_url=server.url, timeout=120) as c:
            if body["stream"]:
                with c.stream("POST", "/v1/completions", json=body) as response:
                    out[i] = stream_texts(events(response), body["n"])[0]
            else:
                out[i] = [ch["text"] for ch in c.post("/v1/completions", json=body).json()["choices"]]

    alone = [None] * 16
    for i, body in enumerate(bodies):
        run(body, alone, i)
    together = [None] * 16
    threads = [threading.Thread(target=run, args=(body, together, i)) for i, body in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    for body, texts in zip(bodies, alone):  # and each is charrnn's own text
        settings = dict(length=body["max_tokens"], temperature=body["temperature"], top_k=body.get("top_k"),
                        top_p=body.get("top_p"))
        for k, text in enumerate(texts):
            assert text == expected(model, body["prompt"], body["stop"], seed=sample_seed(body["seed"], k + 1),
                                    **settings)[0]


def test_a_client_that_goes_away_frees_its_rows(server, client):
    before = metrics(client, server.url)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=dict(max_tokens=MAX_LENGTH, n=3, stream=True)) as response:
            lines = response.iter_lines()  # kept: a closed iterator would close the connection
            assert next(line for line in lines if line.startswith("data: "))
            assert metrics(client, server.url)[("charrnn_active_streams", "")] == 3
    # the connection is closed: the rows leave at the next engine call, long before the 5,000,000 characters
    assert wait_for(lambda: metrics(client, server.url)[("charrnn_active_streams", "")] == 0, timeout=10)
    key = ("charrnn_requests_total", 'endpoint="completions",outcome="disconnected"')
    assert wait_for(lambda: metrics(client, server.url).get(key, 0) == before.get(key, 0) + 1)
    generated = metrics(client, server.url)[("charrnn_characters_generated_total", "")]
    assert generated - before[("charrnn_characters_generated_total", "")] < 3 * MAX_LENGTH


def test_metrics_parse_and_count(server, client):
    values = metrics(client, server.url)
    for name in ("charrnn_characters_generated_total", "charrnn_active_streams", "charrnn_queued_requests",
                 "charrnn_characters_per_second", "charrnn_max_streams"):
        assert (name, "") in values, name
    assert values[("charrnn_max_streams", "")] == 64 and values[("charrnn_queued_requests", "")] == 0
    ok = ("charrnn_requests_total", 'endpoint="completions",outcome="ok"')
    invalid = ("charrnn_requests_total", 'endpoint="completions",outcome="invalid"')
    complete(client, max_tokens=10)
    client.post("/v1/completions", json={"top_p": 2})
    after = metrics(client, server.url)
    assert after[ok] == values.get(ok, 0) + 1 and after[invalid] == values.get(invalid, 0) + 1
    assert after[("charrnn_characters_generated_total", "")] >= values[("charrnn_characters_generated_total", "")] + 10


def test_score_is_model_score_and_charrnn_evaluate(client, model, checkpoint, tmp_path):
    known = set(model.vocab)
    text = "".join(c for c in open(checkpoint.parent.parent / "corpus.txt").read() if c in known)[:2500]
    answer = client.post("/v1/score", json={"text": text, "model": "best.safetensors"}).json()
    score = model.score(text)
    assert answer["object"] == "score"
    assert (answer["nats_per_char"], answer["bits_per_char"], answer["perplexity"], answer["chars"],
            answer["nats_per_char_stderr"]) == (score.nats_per_char, score.bits_per_char, score.perplexity,
                                                score.chars, score.nats_per_char_stderr)
    (tmp_path / "t.txt").write_text(text)
    evaluate = subprocess.run([sys.executable, "-m", "charrnn", "evaluate", str(checkpoint), str(tmp_path / "t.txt"),
                               "--json"], capture_output=True, text=True, check=True)
    assert json.loads(evaluate.stdout) == {k: answer[k] for k in ("nats_per_char", "bits_per_char", "perplexity",
                                                                  "chars", "nats_per_char_stderr")}
    bad = client.post("/v1/score", json={"text": "caf\u00e9 \u2192 x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "text" and "'\u2192'" in bad.text
    skipped = client.post("/v1/score", json={"text": "the \u2192 cat", "skip_unknown": True}).json()
    assert skipped["chars"] == model.score("the \u2192 cat", skip_unknown=True).chars
    assert client.post("/v1/score", json={"txt": "ab"}).json()["error"]["param"] == "txt"
    assert client.post("/v1/score", json={"text": "a"}).status_code == 400


def test_the_official_openai_client(server, model):
    openai = pytest.importorskip("openai", reason="the openai package is not installed: pip install -e '.[test]'")
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in api.models.list()] == ["best.safetensors"]
    answer = api.completions.create(model="best.safetensors", prompt="ROMEO:", max_tokens=90, seed=3,
                                    temperature=0.9, stop=["\n\n"], extra_body={"top_k": 12})
    text, finish = expected(model, "ROMEO:", ["\n\n"], length=90, seed=3, temperature=0.9, top_k=12)
    assert answer.choices[0].text == text and answer.choices[0].finish_reason == finish
    assert answer.usage.prompt_tokens == 6
    pieces = [chunk.choices[0].text for chunk in
              api.completions.create(model="best.safetensors", prompt="ROMEO:", max_tokens=90, seed=3,
                                     temperature=0.9, stop=["\n\n"], extra_body={"top_k": 12}, stream=True)
              if chunk.choices]
    assert "".join(pieces) == text
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="gpt-3.5-turbo-instruct", prompt="A")
    with pytest.raises(openai.BadRequestError, match="top_p"):
        api.completions.create(model="best.safetensors", prompt="A", top_p=3)
