"""Helpers shared by every CLI command: user-error handling and console output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from mimlab.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn a :class:`UserError` raised by a command into one line on stderr and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper  # type: ignore[return-value]


def echo_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class OneLineErrors(typer.core.TyperGroup):
    """The top-level command group: a Click usage error (unknown option, bad int, missing argument) is one
    ``error:`` line on stderr and exit 2, like a :class:`UserError`, instead of Typer's boxed panel."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:  # Typer >= 0.20 vendors Click as typer._click; its exceptions are not click's
            from typer._click import exceptions as click
        except ImportError:  # pragma: no cover - older Typer on plain Click
            import click

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except getattr(click, "NoArgsIsHelpError", ()) as err:  # `platform data` alone: the help, as before
            print(err.ctx.get_help() if err.ctx is not None else err.format_message())
            sys.exit(2)
        except click.UsageError as err:
            where = f"{err.ctx.command_path}: " if err.ctx is not None else ""
            hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
            message = " ".join(err.format_message().split()) + _given(err, args)
            print(f"error: {where}{message}{hint}", file=sys.stderr, flush=True)
            sys.exit(2)
        except click.ClickException as err:
            print(f"error: {' '.join(err.format_message().split())}", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
        except (KeyboardInterrupt, typer.Abort):
            print("aborted", file=sys.stderr, flush=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def _given(err: Any, args: Any) -> str:
    """`` (got 'ten')``: the value the user typed for the option a BadParameter names, when it can be found."""
    param = getattr(err, "param", None)
    opts = list(getattr(param, "opts", []) or [])
    if not opts or getattr(err, "__class__", type).__name__ != "BadParameter":
        return ""
    argv = list(sys.argv[1:] if args is None else args)
    for i, token in enumerate(argv):
        for opt in opts:
            if token == opt and i + 1 < len(argv):
                return f" (got '{argv[i + 1]}')"
            if token.startswith(opt + "="):
                return f" (got '{token[len(opt) + 1:]}')"
    return ""
