"""`charrnn serve`: a checkpoint behind an OpenAI-compatible HTTP API (Starlette and
uvicorn, the optional extra `charrnn[serve]`), with continuous batching on one
engine thread, a web playground, health and Prometheus metrics.

    app.py     the routes
    engine.py  the engine thread: the batch, the queue, scoring
    openai.py  request fields to settings, OpenAI's response and error shapes
    metrics.py /metrics in Prometheus's text format
    main.py    binding, uvicorn, signals and exit status
    static/    the playground page
"""

MISSING = "charrnn serve needs starlette and uvicorn: pip install 'charrnn[serve]'"


def missing_dependencies() -> str | None:
    """The message to show when the server's dependencies are not installed, else None."""
    import importlib.util

    if all(importlib.util.find_spec(name) is not None for name in ("starlette", "uvicorn", "anyio")):
        return None
    return MISSING
