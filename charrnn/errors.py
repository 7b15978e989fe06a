"""The exceptions the library raises for problems a user can fix, and how their
messages name settings.

The library speaks in setting names (batch_size), the command line in flags
(--batch-size) and the server in request fields (max_tokens). A message names a
setting through named(), which leaves a marker in the text; each front end renders
the markers its own way (render), and str() of an error renders setting names.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A marker: \ue000name\ue001value\ue002, value empty for a bare name. Private-use
# characters never occur in messages otherwise.
_OPEN, _SEP, _CLOSE = "\ue000", "\ue001", "\ue002"
_MARKER = re.compile(f"{_OPEN}([a-z_0-9]+){_SEP}([^{_CLOSE}]*?)({_SEP}?){_CLOSE}")
_NO_VALUE = object()


def named(name: str, value=_NO_VALUE) -> str:
    """A reference to setting `name` in a message, with the value it was given if
    any: 'batch_size=32' from the library, '--batch-size 32' from the command line."""
    if value is _NO_VALUE:
        return f"{_OPEN}{name}{_SEP}{_SEP}{_CLOSE}"
    return f"{_OPEN}{name}{_SEP}{value}{_CLOSE}"


def as_setting(name: str, value: str | None) -> str:
    return name if value is None else f"{name}={value}"


def as_flag(name: str, value: str | None) -> str:
    flag = "--" + name.replace("_", "-")
    return flag if value is None else f"{flag} {value}"


def render(message: str, style: Callable[[str, str | None], str] = as_setting) -> str:
    """message with every setting reference written by style(name, value or None)."""
    return _MARKER.sub(lambda m: style(m.group(1), None if m.group(3) else m.group(2)), message)


def names_in(message: str) -> list[str]:
    """The settings a message names (see named), in order of appearance."""
    return [m.group(1) for m in _MARKER.finditer(message)]


class CharrnnError(Exception):
    """A bad input, file or setting, described in one line for the user.

    .message keeps the setting references (see named) for a front end to render;
    str() renders them as setting names."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return render(self.message)


class SettingError(CharrnnError):
    """A setting's value breaks its rule: 'batch_size must be a positive integer, got 0'.
    .name is the setting, .value what it was given, .requirement what it must be."""

    def __init__(self, name: str, value, requirement: str):
        super().__init__(f"{named(name)} must be {requirement}, got {value!r}")
        self.name, self.value, self.requirement = name, value, requirement


class UnknownSettingError(CharrnnError):
    """A name that is not a setting (in keyword arguments, a request or a checkpoint)."""

    def __init__(self, message: str, names):
        super().__init__(message)
        self.names = sorted(names)


class UnknownCharactersError(CharrnnError):
    """Text has characters that are not in the vocabulary; .chars names them."""

    def __init__(self, message: str, chars):
        super().__init__(message)
        self.chars = sorted(set(chars))
