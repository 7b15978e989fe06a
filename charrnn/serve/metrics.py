"""GET /metrics: the server's counters in Prometheus's text format (version 0.0.4)."""

from __future__ import annotations

import collections
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# How a request ended: "ok"; "invalid" (a 4xx: bad input, unknown model, too large);
# "unauthorized" (401); "disconnected" (the client went away first); "unavailable"
# (the server was stopping); "error" (a fault of the server: 500).
OUTCOMES = ("ok", "invalid", "unauthorized", "disconnected", "unavailable", "error")


class Counters:
    """Requests to the API by endpoint and outcome, counted from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()

    def count(self, endpoint: str, outcome: str) -> None:
        assert outcome in OUTCOMES, outcome
        with self._lock:
            self.requests[(endpoint, outcome)] += 1


def render(counters: Counters, engine) -> str:
    lines = []

    def metric(name: str, kind: str, help_text: str, samples) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")

    with counters._lock:
        requests = sorted(counters.requests.items())
    metric("charrnn_requests_total", "counter", "API requests answered, by endpoint and outcome.",
           [({"endpoint": e, "outcome": o}, n) for (e, o), n in requests])
    metric("charrnn_characters_generated_total", "counter", "Characters generated, stop strings included.",
           [({}, engine.generated)])
    metric("charrnn_engine_calls_total", "counter", "Generation calls into the engine (each advances every "
           "active stream by a block of characters).", [({}, engine.calls)])
    metric("charrnn_active_streams", "gauge", "Streams being generated (a request with n choices has n).",
           [({}, engine.active_streams)])
    metric("charrnn_max_streams", "gauge", "The most streams generated together (--max-streams).",
           [({}, engine.max_streams)])
    metric("charrnn_queued_requests", "gauge", "Completion requests waiting for the batch to have room.",
           [({}, engine.queued)])
    metric("charrnn_characters_per_second", "gauge", "Characters generated per second over the last 5 seconds.",
           [({}, f"{engine.chars_per_second():.1f}")])
    return "\n".join(lines) + "\n"
