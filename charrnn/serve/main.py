"""Running the server: bind the address, start uvicorn with the app, stop cleanly on
Ctrl-C or SIGTERM (the engine thread ended, exit status 128 + the signal)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
import threading

import uvicorn

from charrnn.config import ServeConfig
from charrnn.serve.app import Server, create_app, model_id_of
from charrnn.serve.engine import Engine

GRACE = 5.0  # seconds open connections get to finish once the server stops
CLOSE_AFTER = 1.0  # seconds after which a response still under way is cut off (its client does not read)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one)."""
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, with the engine stopped first when a stop is asked for (so
    that open streams end at once instead of holding the shutdown), and the signal
    kept for the exit status instead of raised again."""

    def __init__(self, config, engine: Engine):
        super().__init__(config)
        self.engine, self.signal = engine, None

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        self.signal = self.signal or sig
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None) -> None:
        self.engine.stop(timeout=0)  # open streams end now; the lifespan joins the thread
        # A stream whose client does not read cannot send its end: after a moment,
        # close such connections, as a client that went away would be.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_AFTER
        while any(_busy(c) for c in self.server_state.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if _busy(connection) and transport is not None:
                transport.close()
        await super().shutdown(sockets)


def _busy(connection) -> bool:
    """Whether a uvicorn connection is in the middle of a response."""
    cycle = getattr(connection, "cycle", None)
    return cycle is not None and not cycle.response_complete


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(checkpoint: str, config: ServeConfig, err=print) -> int:
    """Serve until Ctrl-C or SIGTERM; the exit status (0, or 128 + the signal)."""
    from charrnn.api import load

    model = load(checkpoint)
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    engine = Engine(model, config.max_streams, config.threads)
    server = Server(model, config, engine, model_id_of(checkpoint))
    uv_config = uvicorn.Config(create_app(server), log_level="warning", access_log=False,
                               timeout_graceful_shutdown=GRACE, lifespan="on")
    uv = _Uvicorn(uv_config, engine)
    cfg = model.config
    err(f"charrnn serve: {server.model_id} ({cfg.cell} {cfg.layers}x{cfg.hidden}, {cfg.vocab_size} characters) "
        f"on {url(config.host, port)} (playground at /, API at /v1; "
        f"{'API key required' if config.api_key else 'no API key'}; "
        f"up to {config.max_streams} streams, {engine.threads} engine thread{'s' if engine.threads > 1 else ''})")
    if not is_loopback(config.host) and not config.api_key:
        err(f"Warning: listening on {config.host} without an API key: anyone who can reach this machine can use "
            "the server; set --api-key or CHARRNN_API_KEY")
    try:
        uv.run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()
    if uv.signal is not None:
        err("charrnn serve: stopped" + (" (SIGTERM)" if uv.signal == signal.SIGTERM else ""))
        return 128 + int(uv.signal)
    return 0 if uv.started else 1


def main(checkpoint: str, config: ServeConfig) -> None:
    def err(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    sys.exit(run(checkpoint, config, err))
