"""What the commands that open the alert database share: argument checks, settings, safe output."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.text import Text

from rayworker.errors import InputError
from rayworker.settings import Settings, load_settings
from rayworker.sinks.factory import sqlite_path

__all__ = [
    "add_record_choice",
    "add_trim",
    "age",
    "non_empty",
    "positive_int",
    "positive_seconds",
    "require_sqlite_file",
    "safe_text",
    "seconds",
    "store_settings",
    "terminal",
]

_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def non_empty(text: str) -> str:
    """An argparse type: any text that is not blank."""
    if not text.strip():
        msg = "give a non-empty value"
        raise argparse.ArgumentTypeError(msg)
    return text


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f'Got "{text}"; give a whole number of at least 1'
        raise argparse.ArgumentTypeError(msg)
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):  # also refuses NaN
        msg = f'Got "{text}"; give a finite number of seconds, 0 or more'
        raise argparse.ArgumentTypeError(msg)
    return value


_AGE: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def age(text: str) -> float:
    """An argparse type: an age such as 30d, 12h, 90m or 3600s, in seconds (above 0)."""
    found = _AGE.match(text.strip())
    if found is None or float(found.group(1)) <= 0:
        msg = f'Got "{text}"; give an age such as 30d, 12h, 90m or 3600s'
        raise argparse.ArgumentTypeError(msg)
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    value = seconds(text)
    if value == 0:
        msg = f'Got "{text}"; give a number of seconds above 0'
        raise argparse.ArgumentTypeError(msg)
    return value


def store_settings(args: argparse.Namespace) -> Settings:
    """Settings, with ``--alerts-dsn`` (when given) in place of ``RAYWORKER_ALERTS_DSN``."""
    if args.alerts_dsn is None:
        return load_settings()
    return load_settings(alerts_dsn=args.alerts_dsn)


def require_sqlite_file(settings: Settings) -> None:
    """Refuse a SQLite alert database that does not exist yet (opening would create it)."""
    if settings.alerts_backend != "sqlite":
        return
    path = sqlite_path(settings.alerts_dsn.get_secret_value())
    if path != ":memory:" and not Path(path).is_file():
        msg = (
            f"no alert store at {path}; create it with `rayworker db migrate` or point "
            "--alerts-dsn (RAYWORKER_ALERTS_DSN) at an existing one"
        )
        raise InputError(msg)


def add_record_choice(
    parser: argparse.ArgumentParser,
    *,
    narrowing: Sequence[str],
    record_id: Callable[[str], str],
    verb: str,
    done: str,
) -> None:
    """The options of a command that acts on chosen records (``--id``, ``--all``, ``--limit``,
    ``--dry-run``) and its usage rule, which argparse cannot say: records are chosen with
    ``--id`` or the ``narrowing`` options (attribute names, all given must match), or with
    ``--all``, never both. ``verb``/``done``: what the command does to a record ("delete",
    "deleted"), for the help."""
    parser.add_argument(
        "--id",
        dest="ids",
        action="append",
        type=record_id,
        metavar="ID",
        help="a record id, as `list` shows it (repeatable)",
    )
    parser.add_argument("--all", action="store_true", help="every record")
    parser.add_argument("--limit", type=positive_int, help="at most this many, oldest first")
    parser.add_argument(
        "--dry-run", action="store_true", help=f"say how many would be {done}; {verb} nothing"
    )
    options = ["--id", *(f"--{name.replace('_', '-')}" for name in narrowing)]
    named = f"{', '.join(options[:-1])} or {options[-1]}"

    def check(args: argparse.Namespace) -> None:
        narrowed = args.ids or any(getattr(args, name) for name in narrowing)
        if not (args.all or narrowed):
            # A bare command acting on everything would be too easy to type by accident.
            parser.error(f"choose records with {named}, or pass --all")
        if args.all and narrowed:
            parser.error(f"--all means every record: give it no {named}")

    parser.set_defaults(check_args=check)


def add_listing(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """The ``list [--limit N]`` command of a dead-letter store (oldest first), with ``parents``'
    options (which store, which records, ``--json``); the caller sets its handler."""
    listing = commands.add_parser("list", parents=list(parents), help="the records, oldest first")
    listing.add_argument(
        "--limit", type=positive_int, default=50, help="at most this many (default 50)"
    )
    return listing


def add_trim(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    source: argparse.ArgumentParser,
    description: str,
) -> argparse.ArgumentParser:
    """The ``trim --older-than AGE [--dry-run]`` retention command of a dead-letter store, with
    ``source``'s options (which store); the caller sets its handler."""
    trim = commands.add_parser(
        "trim",
        parents=[source],
        help="delete records older than an age (retention)",
        description=description,
    )
    trim.add_argument(
        "--older-than", type=age, required=True, metavar="AGE", help="e.g. 30d, 12h or 90m"
    )
    trim.add_argument("--dry-run", action="store_true", help="count them; delete nothing")
    return trim


def utc_second(text: str) -> str:
    """An ISO-8601 time to the second, in UTC with a Z (as given when it is not one with an
    offset): records keep microseconds, which a terminal line has no room for."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return text
    if at.tzinfo is None:
        return text
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_when(at: datetime | None) -> str:
    """A stored time for a table cell: UTC to the second, ``-`` when there is none."""
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def terminal() -> Console:
    """A console that neither highlights nor re-wraps what it prints."""
    return Console(highlight=False, soft_wrap=False)


def _acts_on_terminal(ch: str) -> bool:
    return ch < " " or "\x7f" <= ch <= "\x9f" or ch in _BIDI


def safe_text(value: object) -> Text:
    """Untrusted text for the terminal: no markup, control and bidi characters escaped."""
    text = str(value)
    if any(_acts_on_terminal(ch) for ch in text):
        text = "".join(
            ch.encode("unicode_escape").decode() if _acts_on_terminal(ch) else ch for ch in text
        )
    return Text(text)
