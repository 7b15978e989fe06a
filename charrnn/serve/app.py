"""The server's routes (Starlette): the OpenAI-style API, scoring, health, metrics and
the playground page. Generation and scoring run on the engine thread (engine.py);
requests are parsed and answered in OpenAI's shapes by openai.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import os
from importlib import resources

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from charrnn.config import ServeConfig
from charrnn.errors import CharrnnError
from charrnn.evaluate import score_text_steps
from charrnn.sample import Stream, beam_steps, sample_seed
from charrnn.serve import metrics
from charrnn.serve.engine import Engine, Job, Update
from charrnn.serve.openai import (ChoiceText, RequestError, completion_body, completion_id, chunk_body, error_body,
                                  from_charrnn, now, parse_completion, parse_score, usage)

MAX_BODY = 1 << 20  # bytes: a larger request body is refused (413)
# The outcome (see metrics.OUTCOMES) of a request answered with an error status; any
# other 4xx is "invalid". 499: the client went away before its answer was ready.
OUTCOME_OF_STATUS = {499: "disconnected", 500: "error", 503: "unavailable"}


def model_id_of(path) -> str:
    """The served model's id: the checkpoint file's name ("best.safetensors")."""
    return os.path.basename(str(path))


def error_response(e: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def read_json(request: Request):
    """The request body as JSON, at most MAX_BODY bytes."""
    length = request.headers.get("content-length")
    too_large = RequestError(413, f"the request body is larger than {MAX_BODY} bytes", None, "request_too_large")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_BODY:
            raise too_large
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except ValueError as e:  # UnicodeDecodeError too
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise RequestError(400, "the request body is not valid JSON: it nests too deeply") from None


def sse(data) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response that stops as soon as the client goes away (it
    listens for the disconnect while streaming, whatever ASGI version the server
    speaks) and always closes its iterator, whose cleanup frees the engine's rows."""

    media_type = "text/event-stream"

    def __init__(self, content, on_close=None):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close  # called at the end, also when the stream never began

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-send
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            await self.body_iterator.aclose()
            if self.on_close is not None:
                self.on_close()


class Server:
    """The app's state: the model, its engine, the settings and the counters."""

    def __init__(self, model, config: ServeConfig, engine: Engine, model_id: str):
        self.model, self.config, self.engine, self.model_id = model, config, engine, model_id
        self.vocab = model.checkpoint.vocab
        self.counters = metrics.Counters()
        self.created = int(os.path.getmtime(model.path)) if model.path and os.path.exists(model.path) else now()

    # ----- authorisation and errors
    def authorised(self, request: Request) -> bool:
        key = self.config.api_key
        if key is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def api(endpoint: str):  # noqa: N805 - a decorator of the methods below
        """An API route: the key checked, a RequestError answered in OpenAI's shape,
        each outcome counted (a streamed answer counts its own when it ends)."""

        def decorate(handler):
            @functools.wraps(handler)
            async def route(self, request: Request) -> Response:
                try:
                    if not self.authorised(request):
                        self.counters.count(endpoint, "unauthorized")
                        raise RequestError(401, "Missing or incorrect API key: send the header "
                                                "'Authorization: Bearer KEY'", None, "invalid_api_key")
                    response = await handler(self, request)
                except RequestError as e:
                    if e.status != 401:
                        self.counters.count(endpoint, OUTCOME_OF_STATUS.get(e.status, "invalid"))
                    return error_response(e)
                except Exception:  # a fault of the server: answered 500 by server_error
                    self.counters.count(endpoint, "error")
                    raise
                if not isinstance(response, EventStream):
                    self.counters.count(endpoint, "ok")
                return response

            return route

        return decorate

    # ----- open routes
    async def health(self, request: Request) -> Response:
        """200 {"status": "ok"} once the engine is ready; 503 {"status": "loading"} before."""
        ready = self.engine.ready.is_set()
        return JSONResponse({"status": "ok" if ready else "loading",
                             "api_key_required": self.config.api_key is not None}, status_code=200 if ready else 503)

    async def playground(self, request: Request) -> Response:
        page = resources.files("charrnn.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    # ----- the API
    def model_card(self) -> dict:
        cfg = self.model.config
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "charrnn",
                "charrnn": {"cell": cfg.cell, "layers": cfg.layers, "hidden": cfg.hidden, "embed": cfg.embed,
                            "vocab_size": cfg.vocab_size, "checkpoint": str(self.model.path),
                            "max_tokens": self.config.max_length, "max_n": self.config.max_streams}}

    @api("models")
    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    @api("models")
    async def model_info(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name != self.model_id:
            raise RequestError(404, f"The model '{name}' does not exist: this server serves '{self.model_id}'",
                               "model", "model_not_found")
        return JSONResponse(self.model_card())

    @api("metrics")
    async def metrics(self, request: Request) -> Response:
        return Response(metrics.render(self.counters, self.engine), media_type=metrics.CONTENT_TYPE)

    @api("completions")
    async def completions(self, request: Request) -> Response:
        req = parse_completion(await read_json(request), self.model_id, self.config.max_length,
                               self.config.max_streams)
        cfg = req.settings
        if cfg.beam is not None and req.stream:
            raise RequestError(400, "beam search cannot stream: its text is known only when the search ends",
                               "stream")
        try:
            job = self._job(cfg)
        except CharrnnError as e:
            raise from_charrnn(e) from None
        self.engine.submit(job)
        answer = Answer(self, job, req)
        if req.stream:
            return EventStream(answer.events(), on_close=lambda: self.engine.cancel(job))
        return JSONResponse(await answer.whole(request))

    def _job(self, cfg) -> Job:
        """The engine's work for a completion: streams in the shared batch; or, stepped
        between its calls, a beam search or a search for unique lines."""
        loop, model, vocab = asyncio.get_running_loop(), self.model, self.vocab
        streams = [Stream(vocab, cfg, sample_seed(cfg.seed, i + 1), i, model.lines) for i in range(cfg.num_samples)]
        if cfg.beam is not None:
            def finish(ids):
                n, _ = streams[0].take(ids, vocab.chars)
                return [Update(0, vocab.decode(ids[:n]), True, streams[0].stop)]

            return Job(loop, steps=lambda: beam_steps(model.network, vocab, streams[0]), finish=finish)
        if cfg.unique:
            sampler = model.sampler(cfg)  # refuses a model that is not in line mode

            def found(_):
                found = [Update(i, vocab.decode(ids), True, s.stop)
                         for i, (s, ids) in enumerate(zip(sampler.streams, sampler.found_ids))]
                return found + [Update(i, "", True, None) for i in range(len(found), cfg.num_samples)]

            return Job(loop, steps=sampler.prepare_steps, finish=found)
        return Job(loop, streams)

    @api("score")
    async def score(self, request: Request) -> Response:
        text, skip_unknown = parse_score(await read_json(request), self.model_id)
        try:
            ids = self.model.score_input(text, skip_unknown)
        except CharrnnError as e:
            raise from_charrnn(e, "text") from None
        model = self.model
        job = Job(asyncio.get_running_loop(), steps=lambda: score_text_steps(model.network, ids, model.end_id,
                                                                             model.lines, model.cr_id))
        self.engine.submit(job)
        async with watch_disconnect(request, self.engine, job):
            async for _ in job.updates():
                pass
        if job.error:
            raise job_error(job)
        if job.cancelled:
            raise RequestError(499, "the client went away", None, "client_closed_request")
        return JSONResponse({"object": "score", "model": self.model_id, **job.result.report()})


def job_error(job: Job) -> RequestError:
    """Why the engine gave up on a job, as an error: 503 when the server is stopping,
    500 for a fault of the engine."""
    status = 503 if job.error_code == "shutting_down" else 500
    return RequestError(status, job.error, None, job.error_code, "server_error")


@contextlib.asynccontextmanager
async def watch_disconnect(request: Request, engine: Engine, job: Job):
    """Cancel the job if the client goes away while the block runs."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                engine.cancel(job)
                return

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()


class Answer:
    """A completion's answer, whole or as a stream of chunks."""

    def __init__(self, server: Server, job: Job, req):
        self.server, self.job, self.req = server, job, req
        cfg = req.settings
        self.prompt, self.n = cfg.prime, cfg.num_samples
        self.texts = ChoiceText(cfg.prime, cfg.stop).copies(self.n)
        self.id, self.created = completion_id(), now()

    def usage(self) -> dict:
        return usage(self.prompt, sum(t.generated for t in self.texts))

    def _merge(self, updates) -> dict[int, list]:
        """The updates of one read, per choice: [text to give out, finish reason or None]."""
        merged: dict[int, list] = {}
        for u in updates:
            entry = merged.setdefault(u.index, ["", None])
            entry[0] += self.texts[u.index].feed(u.text, u.ended, u.stop)
            if u.ended:
                entry[1] = "stop" if u.stop is not None else "length"
        return merged

    async def whole(self, request: Request) -> dict:
        out = [self.prompt if self.req.echo else "" for _ in range(self.n)]
        finish = ["length"] * self.n
        async with watch_disconnect(request, self.server.engine, self.job):
            async for updates in self.job.updates():
                for i, (text, reason) in self._merge(updates).items():
                    out[i] += text
                    finish[i] = reason or finish[i]
        if self.job.error:
            raise job_error(self.job)
        if self.job.cancelled:
            raise RequestError(499, "the client went away", None, "client_closed_request")
        return completion_body(self.id, self.created, self.server.model_id, out, finish, self.usage(),
                               self.req.settings.seed)

    async def events(self):
        """The server-sent events: a chunk per choice with new text (all that came
        since the last one: a slow reader gets bigger pieces), usage if asked, [DONE]."""
        server, outcome, seed = self.server, "disconnected", self.req.settings.seed

        def chunk(i, text, reason):
            return sse(chunk_body(self.id, self.created, server.model_id, i, text, reason, seed))

        try:
            if self.req.echo:
                yield "".join(chunk(i, self.prompt, None) for i in range(self.n))
            async for updates in self.job.updates():
                pieces = [chunk(i, text, reason) for i, (text, reason) in sorted(self._merge(updates).items())
                          if text or reason]
                if pieces:
                    yield "".join(pieces)
            if self.job.error:
                outcome = OUTCOME_OF_STATUS[job_error(self.job).status]
                yield sse(job_error(self.job).body())
                return
            if self.job.cancelled:
                return
            if self.req.include_usage:
                yield sse({"id": self.id, "object": "text_completion", "created": self.created,
                           "model": server.model_id, "choices": [], "usage": self.usage(), "seed": seed})
            yield "data: [DONE]\n\n"
            outcome = "ok"
        except Exception:
            outcome = "error"
            raise
        finally:
            server.engine.cancel(self.job)
            server.counters.count("completions", outcome)


async def http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = {404: f"no such endpoint: {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse(error_body(message, "invalid_request_error", None, code), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error", None, None),
                        status_code=500)


def create_app(server: Server) -> Starlette:
    """The Starlette app; the engine thread starts and stops with it."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, server.engine.stop)

    routes = [
        Route("/", server.playground),
        Route("/health", server.health),
        Route("/metrics", server.metrics),
        Route("/v1/models", server.models),
        Route("/v1/models/{model:path}", server.model_info),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/score", server.score, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})
