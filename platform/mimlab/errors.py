"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback.

Raise :class:`UserError` (or a subclass) for anything caused by the user's input — a missing file, a bad key, an
unknown method. The CLI entry point catches it, prints ``error: <message>`` and exits with ``exit_code``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input. The message must say which file/key and what was expected."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the nearest choice, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, word: str, choices: Iterable[str]) -> UserError:
    """Build the standard 'unknown X' error listing the valid choices and suggesting the nearest."""
    choices = sorted(choices)
    return UserError(f"unknown {kind} '{word}'{did_you_mean(word, choices)}; valid: {', '.join(choices)}")


def check_range(option: str, value: float | None, *, at_least: float | None = None,
                above: float | None = None) -> None:
    """Refuse an option value out of range (``None`` = not given, always fine).

    Args:
        option: the option as the user typed it (``--limit``) or a config key.
        value: the given value.
        at_least: smallest allowed value (``value >= at_least``).
        above: exclusive lower bound (``value > above``); also refuses NaN and infinity.
    """
    if value is None:
        return
    if at_least is not None and not value >= at_least:
        raise UserError(f"{option} must be >= {at_least:g}, got {value:g}")
    if above is not None and not (value > above and value != float("inf")):
        raise UserError(f"{option} must be a finite number > {above:g}, got {value:g}")


def read_text_file(path: os.PathLike[str] | str, what: str = "file") -> str:
    """The UTF-8 text of a file the user named; a folder, an unreadable or a non-UTF-8 file is a :class:`UserError`."""

    try:
        raw = open(os.fspath(path), "rb").read()
    except IsADirectoryError:
        raise UserError(f"{what} '{path}' is a folder, expected a text file") from None
    except OSError as err:
        raise UserError(f"{what} '{path}' cannot be read ({err.strerror or err})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} '{path}' is not UTF-8 text (byte {err.start}: {raw[err.start]:#04x}); "
                        "save it as UTF-8") from None
