"""The ``rayworker silences`` command: mute notifications matching labels, per tenant.

::

    rayworker silences add --tenant T MATCHER [MATCHER ...] (--duration D | --ends TIME)
                           [--starts TIME] --by WHO --comment TEXT [--json]
    rayworker silences list --tenant T [--all] [--json]
    rayworker silences expire --tenant T SILENCE_ID

A matcher is ``name=value``, ``name!=value``, ``name=~regex`` or ``name!~regex`` over the
alert labels (``rule_id``, ``severity``, ``type``, ``source``, ``id``, ``group.<name>``)
and ``tag``. Silences live in the alert database (``--alerts-dsn``, else
``RAYWORKER_ALERTS_DSN``), which needs ``rayworker db migrate``; a running notifier picks
changes up within its ``silence_refresh`` (5 s by default). Every command is scoped by
``--tenant``: another tenant's silence is "not found", exactly like an unknown one.

Exit codes: 0 on success; 1 on an error (printed as ``error: ...``); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticCustomError
from rich.table import Table

from rayworker.cli_common import non_empty, require_sqlite_file, safe_text, store_settings, terminal
from rayworker.notify.model import epoch_s, from_epoch_s
from rayworker.notify.silence_store import silence_store
from rayworker.notify.silences import Matcher, Silence, SilenceError, new_silence, parse_matcher
from rayworker.rules.model import parse_duration

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rayworker.notify.silence_store import SilenceStore

__all__ = ["register"]


def _matcher(text: str) -> Matcher:
    try:
        return parse_matcher(text)
    except SilenceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except PydanticCustomError:
        msg = f'Got "{text}"; use a duration such as "30m", "2h" or "1d" (at most 7d)'
        raise argparse.ArgumentTypeError(msg) from None


def _time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        msg = f'Got "{text}"; give an ISO-8601 time with an offset, e.g. 2026-12-01T08:00:00Z'
        raise argparse.ArgumentTypeError(msg)
    return at


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``silences`` command to the ``rayworker`` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--alerts-dsn",
        metavar="DSN",
        help="the alert database holding silences (default: RAYWORKER_ALERTS_DSN)",
    )
    common.add_argument("--tenant", required=True, type=non_empty, help="the tenant whose silences")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    silences = commands.add_parser("silences", help="mute notifications matching labels")
    sub = silences.add_subparsers(dest="silences_command", metavar="COMMAND", required=True)

    add = sub.add_parser(
        "add",
        parents=[common, as_json],
        help="add a silence",
        description="Mute the tenant's notifications whose labels match every MATCHER.",
    )
    add.add_argument(
        "matchers",
        nargs="+",
        type=_matcher,
        metavar="MATCHER",
        help="name=value, name!=value, name=~regex or name!~regex (e.g. rule_id=failed_auth)",
    )
    until = add.add_mutually_exclusive_group(required=True)
    until.add_argument("--duration", type=_duration, help="how long, from --starts (e.g. 2h)")
    until.add_argument("--ends", type=_time, metavar="TIME", help="when it ends (ISO-8601)")
    add.add_argument("--starts", type=_time, metavar="TIME", help="when it starts (default: now)")
    add.add_argument("--by", required=True, type=non_empty, help="who creates it")
    add.add_argument("--comment", required=True, type=non_empty, help="why")
    add.set_defaults(handler=_add)

    listing = sub.add_parser("list", parents=[common, as_json], help="the tenant's silences")
    listing.add_argument("--all", action="store_true", help="include expired silences")
    listing.set_defaults(handler=_list)

    expire = sub.add_parser("expire", parents=[common], help="end a silence now")
    expire.add_argument("silence_id", metavar="SILENCE_ID")
    expire.set_defaults(handler=_expire)


def _with_store(args: argparse.Namespace, work: Callable[[SilenceStore], Awaitable[int]]) -> int:
    settings = store_settings(args)
    require_sqlite_file(settings)

    async def run() -> int:
        store = silence_store(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _iso(seconds: float) -> str:
    return from_epoch_s(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def silence_json(silence: Silence, now: float) -> dict[str, Any]:
    """A silence as JSON-ready data, with its state now."""
    data = silence.to_state()
    for name in ("starts_at", "ends_at", "created_at", "updated_at"):
        data[name] = _iso(data[name])
    data["state"] = silence.state(now)
    return data


def _add(args: argparse.Namespace) -> int:
    now = epoch_s(datetime.now(UTC))
    starts = epoch_s(args.starts) if args.starts is not None else now
    ends = epoch_s(args.ends) if args.ends is not None else starts + args.duration
    silence = new_silence(
        args.tenant,
        args.matchers,
        starts_at=starts,
        ends_at=ends,
        created_by=args.by,
        comment=args.comment,
        now=now,
    )

    async def work(store: SilenceStore) -> int:
        await store.add(silence)
        if args.json:
            sys.stdout.write(json.dumps(silence_json(silence, now)) + "\n")
        else:
            terminal().print(
                safe_text(f"silence {silence.id} added: {silence.state(now)} until {_iso(ends)}")
            )
        return 0

    return _with_store(args, work)


def _list(args: argparse.Namespace) -> int:
    now = epoch_s(datetime.now(UTC))

    async def work(store: SilenceStore) -> int:
        found = await store.for_tenant(args.tenant, now, include_expired=args.all)
        if args.json:
            for silence in found:
                sys.stdout.write(json.dumps(silence_json(silence, now)) + "\n")
            return 0
        console = terminal()
        if not found:
            console.print(safe_text(f"no silences for tenant {args.tenant}"))
            return 0
        table = Table()
        for name in ("id", "state", "matchers", "starts", "ends", "by", "comment"):
            table.add_column(name, overflow="fold")
        for s in found:
            table.add_row(
                safe_text(s.id),
                s.state(now),
                safe_text(", ".join(str(m) for m in s.matchers)),
                _iso(s.starts_at),
                _iso(s.ends_at),
                safe_text(s.created_by),
                safe_text(s.comment),
            )
        console.print(table)
        return 0

    return _with_store(args, work)


def _expire(args: argparse.Namespace) -> int:
    now = epoch_s(datetime.now(UTC))

    async def work(store: SilenceStore) -> int:
        expired = await store.expire(args.tenant, args.silence_id, now)
        terminal().print(safe_text(f"silence {expired.id} expired"))
        return 0

    return _with_store(args, work)
