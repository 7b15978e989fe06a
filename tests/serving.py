"""Helpers of the server's tests (tests/test_serve*.py): a tiny checkpoint, a real
`charrnn serve` on a free loopback port, server-sent events, expected texts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SHAKESPEARE

httpx = pytest.importorskip("httpx", reason="the server's tests need httpx: pip install -e '.[test,serve]'")
pytest.importorskip("starlette", reason="charrnn serve needs starlette: pip install -e '.[test,serve]'")
pytest.importorskip("uvicorn", reason="charrnn serve needs uvicorn: pip install -e '.[test,serve]'")

TINY = dict(layers=1, hidden=16, embed=8, batch_size=4, seq_len=16, eval_every=10, max_steps=20)
_CHECKPOINT: dict[str, Path] = {}


def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small trained checkpoint, made once per test session."""
    if "path" not in _CHECKPOINT:
        import charrnn

        d = tmp_path_factory.mktemp("serve-model")
        corpus = d / "corpus.txt"
        corpus.write_text(SHAKESPEARE.read_text()[:6000])
        _CHECKPOINT["path"] = Path(charrnn.train(corpus, d / "run", progress=False, **TINY).best)
    return _CHECKPOINT["path"]


class ServerProcess:
    """`charrnn serve CKPT --port 0 ARGS...` in a subprocess; .url once it answers."""

    def __init__(self, checkpoint, *args, env: dict | None = None, timeout: float = 120.0):
        self.args = [sys.executable, "-m", "charrnn", "serve", str(checkpoint), "--port", "0", *map(str, args)]
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.proc = None
        self.url = None
        self.stderr = ""

    def start(self) -> "ServerProcess":
        import tempfile

        self.log = tempfile.TemporaryFile("w+")  # stderr (a file: a pipe nobody reads could fill up)
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log, text=True, env=self.env)
        deadline = time.monotonic() + self.timeout
        while self.url is None and time.monotonic() < deadline and self.proc.poll() is None:
            match = re.search(r" on (http://\S+) ", self.read_stderr())
            if match:
                self.url = match.group(1)
            else:
                time.sleep(0.05)
        while self.url is not None and time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"charrnn serve did not start: {self.stderr}")

    def read_stderr(self) -> str:
        self.log.seek(0)
        self.stderr = self.log.read()
        return self.stderr

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop it with sig; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.read_stderr()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def events(response) -> list:
    """The data of each server-sent event of a streamed response ("[DONE]" as is)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stream_texts(chunks: list, n: int = 1) -> tuple[list[str], list]:
    """Each choice's text and finish reason from a stream's chunks."""
    texts, finish = [""] * n, [None] * n
    for chunk in chunks:
        if chunk == "[DONE]":
            continue
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
            finish[choice["index"]] = choice["finish_reason"] or finish[choice["index"]]
    return texts, finish


def expected(model, prompt: str = "", stop=(), **settings) -> tuple[str, str]:
    """What the server returns for a request (OpenAI's text: no prompt, no stop
    string) and its finish reason, from charrnn's own Model.generate."""
    full = model.generate(prompt, stop=list(stop), **settings)
    generated = full[len(prompt):]
    for s in stop:
        if generated and full.endswith(s):
            return generated[:len(generated) - min(len(s), len(generated))], "stop"
    return generated, "length"


def metrics(client, url: str, headers=None) -> dict:
    """/metrics as {(name, labels): value}, checking every line's syntax on the way."""
    response = client.get(url + "/metrics", headers=headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values, typed = {}, set()
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
                        r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*)?\})? (-?[0-9.e+]+|NaN|\+Inf|-Inf)$')
    for line in response.text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge"), line
            typed.add(name)
            continue
        m = sample.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        assert m.group(1) in typed, f"{m.group(1)} has no # TYPE line"
        values[(m.group(1), m.group(3) or "")] = float(m.group(5))
    return values


def wait_for(condition, timeout: float = 10.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()
