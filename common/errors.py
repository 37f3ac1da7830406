"""A user mistake (missing data, bad labels, wrong checkpoint, impossible flags) is reported as one clear line.

Code raises ``UserError``; every command-line entry runs through ``exit_on_user_error``, which prints
``error: <message>`` instead of a traceback and exits with status 2 (the scripts through ``common.runs.run_main``,
which also removes a half-made run folder; the benchmarks directly). Messages say what is wrong and how to fix it.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


def exit_on_user_error(main: Callable[[], None], cleanup: Callable[[], None] = lambda: None) -> None:
    """Run ``main``; a ``UserError`` it raises runs ``cleanup``, prints ``error: <message>`` on stderr and exits
    with status 2: one line, never a traceback."""
    try:
        main()
    except UserError as e:
        cleanup()
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


def one_line(text: object, limit: int = 160) -> str:
    """``text`` (e.g. a library's exception) folded onto one line and, if longer than ``limit``, cut at a word
    boundary with an ellipsis: fit to quote inside a UserError without ending mid-word."""
    words = " ".join(str(text).split())
    if len(words) <= limit:
        return words
    return words[:limit].rsplit(" ", 1)[0] + " ..."


def check_flags(values: dict[str, float | int | None], rule: str, holds) -> None:
    """A UserError naming exactly the flags (``values``: flag -> value, None = not set) for which ``holds(value)``
    is false, e.g. ``check_flags({"--iterations": 0, "--batch-size": 8}, "must be >= 1", lambda v: v >= 1)``."""
    bad = [f"{flag} {value}" for flag, value in values.items() if value is not None and not holds(value)]
    if bad:
        raise UserError(f"{', '.join(bad)}: {'each ' if len(bad) > 1 else ''}{rule}.")


def refuse_ignored(args, flags: dict[str, str], why: str) -> None:
    """A UserError for the first of ``flags`` (flag -> argparse dest) that the user gave (argparse's None: not
    given) although the run would ignore it: "<flag> <why>", ``why`` saying what makes it unused and what to do.
    A flag that changes nothing must not pass silently: the user would believe it applied."""
    for flag, dest in flags.items():
        if getattr(args, dest, None) is not None:
            raise UserError(f"{flag} {why}")
