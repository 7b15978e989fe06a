"""`charrnn serve` with an API key (from CHARRNN_API_KEY), how it starts and stops
(exit statuses, the warning beyond loopback), and its missing dependencies."""

import json
import signal
import socket
import time

import pytest
from click.testing import CliRunner
from serving import ServerProcess, httpx, metrics, tiny_checkpoint

from charrnn.cli import cli

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def server(checkpoint):
    with ServerProcess(checkpoint, env={"CHARRNN_API_KEY": KEY}) as s:
        yield s


@pytest.mark.parametrize("method,path", [("POST", "/v1/completions"), ("POST", "/v1/score"), ("GET", "/v1/models"),
                                         ("GET", "/v1/models/best.safetensors"), ("GET", "/metrics")])
def test_every_api_endpoint_needs_the_key(server, method, path):
    body = {"prompt": "A", "max_tokens": 5} if path == "/v1/completions" else {"text": "ab"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        response = httpx.request(method, server.url + path, headers=headers, json=body if method == "POST" else None)
        assert response.status_code == 401, (headers, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert KEY not in response.text
    response = httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {KEY}"},
                             json=body if method == "POST" else None)
    assert response.status_code == 200, response.text


def test_health_and_the_page_stay_open_and_say_a_key_is_needed(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "api_key_required": True}
    assert httpx.get(server.url + "/").status_code == 200


def test_refusals_are_counted(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client() as client:
        before = metrics(client, server.url, headers)
        httpx.post(server.url + "/v1/completions", json={})
        after = metrics(client, server.url, headers)
    key = ("charrnn_requests_total", 'endpoint="completions",outcome="unauthorized"')
    assert after[key] == before.get(key, 0) + 1


def test_openai_client_with_the_key(server):
    openai = pytest.importorskip("openai", reason="the openai package is not installed: pip install -e '.[test]'")
    answer = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0).completions.create(
        model="best.safetensors", prompt="A", max_tokens=10, seed=1)
    assert len(answer.choices[0].text) == 10
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).completions.create(
            model="best.safetensors", prompt="A")


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_it_with_the_shells_status_even_mid_stream(checkpoint, sig, status):
    s = ServerProcess(checkpoint, "--max-length", 1_000_000).start()
    try:
        with httpx.stream("POST", s.url + "/v1/completions", json={"max_tokens": 1_000_000, "stream": True},
                          timeout=30) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            assert s.stop(sig) == status
            rest = list(lines)  # the stream ends (with an error event), it is not cut off mid-way
        assert any("shutting down" in line for line in rest)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert "stopped" in s.stderr and "Traceback" not in s.stderr


def test_a_client_that_does_not_read_does_not_hold_up_the_stop(checkpoint):
    s = ServerProcess(checkpoint, "--max-length", 50_000_000).start()
    host, port = s.url[len("http://"):].rsplit(":", 1)
    body = json.dumps({"max_tokens": 50_000_000, "stream": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(1.0)  # its buffers fill up: the server cannot send more
        start = time.monotonic()
        assert s.stop(signal.SIGTERM, timeout=30) == 143
        assert time.monotonic() - start < 4.0  # not the 5 s grace period, and no traceback
    assert "Traceback" not in s.stderr and "Exception" not in s.stderr


def test_beyond_loopback_without_a_key_it_warns(checkpoint):
    with ServerProcess(checkpoint, "--host", "0.0.0.0") as s:
        s.url = s.url.replace("0.0.0.0", "127.0.0.1")
        assert httpx.get(s.url + "/health").status_code == 200
        assert s.stop() == 143
    assert "Warning: listening on 0.0.0.0 without an API key" in s.stderr
    with ServerProcess(checkpoint) as s:
        s.stop()
    assert "Warning" not in s.stderr


def test_bad_settings_and_a_busy_port(checkpoint):
    result = CliRunner().invoke(cli, ["serve", str(checkpoint), "--max-streams", "0"])
    assert result.exit_code == 2 and "must be a positive integer" in result.output
    with ServerProcess(checkpoint) as s:
        port = s.url.rsplit(":", 1)[1]
        result = CliRunner().invoke(cli, ["serve", str(checkpoint), "--port", port])
        assert result.exit_code == 1 and "Address already in use" in result.output


def test_without_starlette_and_uvicorn_it_says_what_to_install(monkeypatch, checkpoint):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else find_spec(name, *a))
    result = CliRunner().invoke(cli, ["serve", str(checkpoint)])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: charrnn serve needs starlette and uvicorn: pip install 'charrnn[serve]'"
