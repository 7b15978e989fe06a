"""OpenAI's completion API as charrnn serves it: request fields to sampling settings,
errors in OpenAI's shape, and the shapes of responses and stream chunks.

Request fields are OpenAI's (`prompt`, `max_tokens`, `n`, `temperature`, `top_p`,
`stop`, `seed`, `echo`, `stream`, ...) plus every other sampling setting of
charrnn.config.SampleConfig under its own name (`top_k`, `argmax`, ...), so that a
setting added there is a request field here too. Three settings have OpenAI names:
FIELDS says which. Where OpenAI's meaning differs from charrnn's, OpenAI's wins:
temperature 0 is argmax, and a stop string is not part of the returned text.

No Starlette here: this module is plain data in, plain data out.
"""

from __future__ import annotations

import copy
import difflib
import secrets
import time
import uuid
from dataclasses import dataclass

from charrnn.config import SampleConfig, is_real, settings_of
from charrnn.errors import CharrnnError, UnknownCharactersError, names_in, render

# Sampling settings known by another name in OpenAI's API: setting -> request field.
FIELDS = {"length": "max_tokens", "prime": "prompt", "num_samples": "n"}
SETTING_OF = {FIELDS.get(name, name): name for name in settings_of(SampleConfig)}  # request field -> setting
# OpenAI's fields that are not sampling settings: accepted as documented in the README.
OPENAI_FIELDS = ("model", "echo", "stream", "stream_options", "user", "logprobs", "best_of", "suffix",
                 "presence_penalty", "frequency_penalty", "logit_bias")
SCORE_FIELDS = ("model", "text", "skip_unknown")
DEFAULT_LENGTH = settings_of(SampleConfig)["length"].default  # max_tokens when not given (at most --max-length)


def field_of(name: str) -> str:
    """The request field of a setting."""
    return FIELDS.get(name, name)


def as_field(name: str, value: str | None) -> str:
    """errors.render's style for the server: settings named as request fields."""
    field = field_of(name)
    return field if value is None else f"{field}={value}"


class RequestError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_charrnn(e: CharrnnError, param: str | None = None) -> RequestError:
    """A library error as a 400 naming request fields; param: the field at fault when
    the message names none."""
    named = names_in(e.message)
    if named:
        param = field_of(named[0])
    return RequestError(400, render(e.message, as_field), param,
                        "unknown_characters" if isinstance(e, UnknownCharactersError) else None)


def unknown_fields(body: dict, known) -> RequestError | None:
    unknown = sorted(set(body) - set(known))
    if not unknown:
        return None
    parts = []
    for name in unknown:
        hint = (f"the server calls it {FIELDS[name]}" if name in FIELDS
                else next((f"did you mean {m}?" for m in difflib.get_close_matches(name, list(known), n=1)), None))
        parts.append(repr(name) + (f" ({hint})" if hint else ""))
    return RequestError(400, f"unknown field{'s' if len(parts) > 1 else ''}: {', '.join(parts)}", unknown[0])


def check_model(body: dict, model_id: str) -> None:
    """`model` may be left out; any other name than the served model's is a 404."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise RequestError(400, f"model must be a string, got {model!r}", "model")
    if model != model_id:
        raise RequestError(404, f"The model '{model}' does not exist: this server serves '{model_id}'", "model",
                           "model_not_found")


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(400, f"{name} must be true or false, got {value!r}", name)
    return value


def _unsupported(body: dict, name: str, allowed) -> None:
    value = body.get(name)
    if value is not None and not allowed(value):
        raise RequestError(400, f"{name} is not supported by charrnn (got {value!r})", name, "unsupported")


@dataclass(frozen=True)
class Completion:
    """A completion request, checked: the settings of choice i are settings with the
    seed sample_seed(settings.seed, i + 1) (what `charrnn sample --num-samples n`
    gives sample i + 1)."""

    settings: SampleConfig  # num_samples is n; seed is set (random when not given)
    echo: bool
    stream: bool
    include_usage: bool


def parse_completion(body, model_id: str, max_length: int, max_streams: int) -> Completion:
    """A POST /v1/completions body (parsed JSON) as a Completion, or a RequestError."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    error = unknown_fields(body, [*OPENAI_FIELDS, *SETTING_OF])
    if error:
        raise error
    check_model(body, model_id)
    echo, stream = _flag(body, "echo"), _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and set(options) <= {"include_usage"}):
        raise RequestError(400, f"stream_options must be an object with include_usage, got {options!r}",
                           "stream_options")
    include_usage = _flag(options or {}, "include_usage")
    _unsupported(body, "logprobs", lambda v: False)
    _unsupported(body, "suffix", lambda v: v == "")
    _unsupported(body, "presence_penalty", lambda v: is_real(v) and v == 0)
    _unsupported(body, "frequency_penalty", lambda v: is_real(v) and v == 0)
    _unsupported(body, "logit_bias", lambda v: v == {})
    _unsupported(body, "best_of", lambda v: v == body.get("n", 1))
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError(400, f"user must be a string, got {body['user']!r}", "user")

    # null is "not given", as in OpenAI's API
    values = {SETTING_OF[f]: v for f, v in body.items() if f in SETTING_OF and v is not None}
    if "prime" in values and not isinstance(values["prime"], str):
        raise RequestError(400, f"prompt must be a string, got {type(values['prime']).__name__}", "prompt")
    if "temperature" in values:
        temperature = values["temperature"]
        if not is_real(temperature) or temperature < 0:
            raise RequestError(400, f"temperature must be a number >= 0 (0: always the most likely character), "
                                    f"got {temperature!r}", "temperature")
        if temperature == 0:  # OpenAI's meaning: the most likely character (charrnn's argmax)
            del values["temperature"]
            if values.get("beam") is None:  # beam search: the most likely text, which it is already
                values["argmax"] = True
    length = values.setdefault("length", min(DEFAULT_LENGTH, max_length))
    try:
        settings = SampleConfig.from_given(values)
    except CharrnnError as e:
        raise from_charrnn(e) from None
    if length > max_length:
        raise RequestError(400, f"max_tokens must be at most {max_length} (the server's --max-length), got "
                                f"{length}", "max_tokens")
    if settings.num_samples > max_streams:
        raise RequestError(400, f"n must be at most {max_streams} (the server's --max-streams), got "
                                f"{settings.num_samples}", "n")
    if settings.seed is None:
        settings = settings.replace(seed=secrets.randbelow(2**31))
    return Completion(settings, echo, stream, include_usage)


def parse_score(body, model_id: str) -> tuple[str, bool]:
    """A POST /v1/score body: (text, skip_unknown)."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    error = unknown_fields(body, SCORE_FIELDS)
    if error:
        raise error
    check_model(body, model_id)
    text = body.get("text")
    if not isinstance(text, str):
        raise RequestError(400, f"text must be a string, got {type(text).__name__ if text is not None else 'none'}",
                           "text")
    return text, _flag(body, "skip_unknown")


class StopPrefixes:
    """The stop strings' Knuth-Morris-Pratt tables: reading a text a character at a
    time, how long a prefix of each stop it ends with, at O(1) amortised cost per
    character however long the stops are (a request may hold a megabyte of them)."""

    def __init__(self, stops):
        self.stops = tuple(stops)
        self.fails = tuple(_failure(s) for s in self.stops)
        self.width = max((len(s) for s in self.stops), default=1) - 1

    def read(self, matched: list[int], text: str) -> None:
        """matched[i]: the longest prefix of stop i that the text read so far ends
        with; updated for text read after it."""
        for i, (stop, fail) in enumerate(zip(self.stops, self.fails)):
            m = matched[i]
            for c in text:
                while m and (m == len(stop) or stop[m] != c):
                    m = fail[m - 1]
                if stop[m] == c:
                    m += 1
            matched[i] = m

    def longest(self, matched: list[int]) -> int:
        """The longest end of the text read, of at most width characters, that begins
        a stop string (a whole stop only if shorter than the longest)."""
        best = 0
        for m, fail in zip(matched, self.fails):
            while m > self.width:
                m = fail[m - 1]
            best = max(best, m)
        return best


def _failure(s: str) -> list[int]:
    """KMP's table: f[i] = the length of the longest proper prefix of s[:i + 1] that
    is also its suffix."""
    f = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = f[k - 1]
        if s[i] == s[k]:
            k += 1
        f[i] = k
    return f


class ChoiceText:
    """One choice's text as OpenAI returns it, from the characters the engine makes.

    charrnn keeps a stop string at the end of a sample; OpenAI's API leaves it out.
    While a stream runs, the end of its text that could be the start of a stop string
    is held back until the next characters show whether it is one, so streamed
    pieces never hold part of a stop string and join to the non-streamed text. A
    stop string that begins in the prompt is cut from the generated text only."""

    def __init__(self, prompt: str, stops):
        self.prefixes = StopPrefixes(stops)
        self.matched = [0] * len(self.prefixes.stops)
        # A stop is at most width + 1 long: the prompt's earlier characters cannot matter.
        self.prefixes.read(self.matched, prompt[-(self.prefixes.width + 1):])
        self.held = ""  # generated text not yet given out
        self.generated = 0  # characters generated so far (stop strings included)

    def copies(self, n: int) -> list["ChoiceText"]:
        """n choices of the same request: this one and n - 1 copies of it as it is now
        (the prompt and the stops' tables are read once)."""
        out = [self]
        for _ in range(n - 1):
            twin = copy.copy(self)
            twin.matched = list(self.matched)
            out.append(twin)
        return out

    def feed(self, text: str, ended: bool = False, stop: str | None = None) -> str:
        """The text that can be given out after `text` was generated (ended: the
        stream's last characters, stop: the stop string that ended it, if any)."""
        self.generated += len(text)
        pending = self.held + text
        if ended:
            self.held = ""
            if stop is not None:
                cut = min(len(stop), self.generated)  # the stop's characters among the generated ones
                pending = pending[:len(pending) - cut]
            return pending
        self.prefixes.read(self.matched, text)
        # Held text never begins in what was given out: that was no stop's start then,
        # so no longer text from there is one now. (It may begin in the prompt.)
        keep = min(self.prefixes.longest(self.matched), len(pending))
        out, self.held = pending[:len(pending) - keep], pending[len(pending) - keep:]
        return out


def completion_id() -> str:
    return "cmpl-" + uuid.uuid4().hex


def completion_body(cid: str, created: int, model_id: str, texts: list[str], finish: list[str], usage: dict,
                    seed: int) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model_id,
            "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": f}
                        for i, (t, f) in enumerate(zip(texts, finish))],
            "usage": usage, "seed": seed}


def chunk_body(cid: str, created: int, model_id: str, index: int, text: str, finish: str | None,
               seed: int) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model_id,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}], "seed": seed}


def usage(prompt: str, generated: int) -> dict:
    """Usage counted in characters: the prompt once, every choice's generated characters."""
    return {"prompt_tokens": len(prompt), "completion_tokens": generated, "total_tokens": len(prompt) + generated}


def now() -> int:
    return int(time.time())

