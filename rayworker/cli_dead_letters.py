"""The ``rayworker dead-letters`` command: inspect and re-drive the event dead-letter stream.

::

    rayworker dead-letters stats [--config FILE] [--json]
    rayworker dead-letters list [--config FILE] [--tenant T] [--reason R] [--older-than AGE]
                                [--limit N] [--json]
    rayworker dead-letters redrive [--config FILE] (--id ID ... | --tenant T | --reason R |
                                   --older-than AGE | --all) [--limit N] [--dry-run]
    rayworker dead-letters drop [--config FILE] (the same choices) [--limit N] [--dry-run]
    rayworker dead-letters trim --older-than AGE [--config FILE] [--dry-run]

The streams are the pipeline's own settings (``stream_url``, ``dead_letter_stream``,
``stream_key``, from ``RAYWORKER_*`` variables and ``--config``). ``redrive`` appends the
chosen records' original events to the input stream and deletes the records, one record at a
time atomically (:mod:`rayworker.ingest.dead_letters`): fix the cause first (a producer's
clock, a rule, the allowed lateness), or the events come straight back; an event now more
than the allowed lateness behind its tenant comes back as ``late``. ``drop`` deletes chosen
records instead (events that should never count), and ``trim`` deletes every record older
than an age (retention; the stream is also capped at ``dead_letter_maxlen`` records).
``--older-than AGE`` chooses the records added more than AGE ago (``30d``, ``12h``, ``90m``).

Exit codes: 0 on success; 1 on an error (printed as ``error: ...``); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from rich.table import Table

from rayworker.cli_common import (
    add_listing,
    add_record_choice,
    add_trim,
    age,
    non_empty,
    safe_text,
    terminal,
    utc_second,
)
from rayworker.events import RejectReason
from rayworker.ingest.dead_letters import DeadLetter, DeadLetterFilter, DeadLetterStream
from rayworker.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from rayworker.settings import Settings

__all__ = ["register"]

_REASONS = sorted(reason.value for reason in RejectReason)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dead-letters`` command to the ``rayworker`` parser's subcommands."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, help="TOML or YAML settings file")
    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("--tenant", type=non_empty, help="only this tenant's records")
    chosen.add_argument("--reason", choices=_REASONS, help="only records with this reason")
    chosen.add_argument(
        "--older-than",
        type=age,
        metavar="AGE",
        help="only records added more than AGE ago (e.g. 30d, 12h, 90m)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON lines, not a table")

    dead = commands.add_parser(
        "dead-letters", help="inspect and re-drive rejected, late and poison events"
    )
    sub = dead.add_subparsers(dest="dead_letters_command", metavar="COMMAND", required=True)

    stats = sub.add_parser(
        "stats", parents=[config, as_json], help="how many records, by tenant and reason"
    )
    stats.set_defaults(handler=_stats)

    add_listing(sub, [config, chosen, as_json]).set_defaults(handler=_list)

    redrive = sub.add_parser(
        "redrive",
        parents=[config, chosen],
        help="send records' events back to the input stream and delete the records",
        description=(
            "Append the chosen records' original events to the input stream (stream_key) and "
            "delete the records, each atomically. Choose with --id, --tenant, --reason and "
            "--older-than (all must match), or --all."
        ),
    )
    drop = sub.add_parser(
        "drop",
        parents=[config, chosen],
        help="delete records without re-driving them",
        description=(
            "Delete the chosen records (events that should never be processed). Choose with "
            "--id, --tenant, --reason and --older-than (all must match), or --all."
        ),
    )
    for parser, verb, done in ((redrive, "move", "moved"), (drop, "delete", "deleted")):
        add_record_choice(
            parser,
            narrowing=("tenant", "reason", "older_than"),
            record_id=_record_id,
            verb=verb,
            done=done,
        )
    redrive.set_defaults(handler=_redrive)
    drop.set_defaults(handler=_drop)

    trim = add_trim(
        sub, config, "Delete every record added to the dead-letter stream before AGE ago."
    )
    trim.set_defaults(handler=_trim)


_RECORD_ID = re.compile(r"^\d+-\d+$")


def _record_id(text: str) -> str:
    if _RECORD_ID.match(text) is None:
        msg = f'Got "{text}"; a record id looks like 1796154995735-0 (see `list`)'
        raise argparse.ArgumentTypeError(msg)
    return text


def _with_stream(
    args: argparse.Namespace, work: Callable[[DeadLetterStream, Settings], Awaitable[int]]
) -> int:
    settings = load_settings(args.config)

    async def run() -> int:
        client = aioredis.Redis.from_url(
            settings.stream_url.get_secret_value(), socket_connect_timeout=5, socket_timeout=30
        )
        try:
            return await work(DeadLetterStream(client, settings.dead_letter_stream), settings)
        finally:
            await client.aclose()

    return asyncio.run(run())


def _stats(args: argparse.Namespace) -> int:
    async def work(stream: DeadLetterStream, _settings: Settings) -> int:
        counts = await stream.counts()
        rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        if args.json:
            for (tenant, reason), n in rows:
                record = {"tenant": tenant or None, "reason": reason, "count": n}
                sys.stdout.write(json.dumps(record) + "\n")
            return 0
        console = terminal()
        if not rows:
            console.print(safe_text(f"{stream.key}: no dead letters"))
            return 0
        table = Table(title=f"{stream.key}: {_letters(sum(counts.values()))}")
        for name in ("tenant", "reason", "count"):
            table.add_column(name, justify="right" if name == "count" else "left")
        for (tenant, reason), n in rows:
            table.add_row(safe_text(tenant or "(unknown)"), reason, f"{n:,}")
        console.print(table)
        return 0

    return _with_stream(args, work)


def _list(args: argparse.Namespace) -> int:
    matches = _chosen(args)

    async def work(stream: DeadLetterStream, _settings: Settings) -> int:
        found = [letter async for letter in stream.scan(matches, limit=args.limit)]
        if args.json:
            for letter in found:
                sys.stdout.write(json.dumps(letter.to_json()) + "\n")
            return 0
        console = terminal()
        if not found:
            console.print(safe_text(f"{stream.key}: no matching dead letters"))
            return 0
        # Three lines a record (not a table): the message and the payload are long, and a
        # table folds them into columns a few characters wide on an 80-column terminal.
        for letter in found:
            source = f"  from entry {letter.entry}" if letter.entry else ""
            tenant = letter.tenant or "(unknown)"
            at = utc_second(letter.at)
            console.print(safe_text(f"{letter.id}  {at}  {tenant}  {letter.reason}{source}"))
            console.print(safe_text(f"    {letter.message}"))
            if letter.payload:
                console.print(safe_text(f"    {_preview(letter)}"))
        return 0

    return _with_stream(args, work)


def _chosen(args: argparse.Namespace) -> DeadLetterFilter:
    """The records ``--id``, ``--tenant``, ``--reason`` and ``--older-than`` choose (all of
    them: ``--all``)."""
    return DeadLetterFilter(
        tenant=args.tenant,
        reason=args.reason,
        ids=frozenset(args.ids) if getattr(args, "ids", None) else None,
        before_ms=None if args.older_than is None else _cutoff_ms(args.older_than),
    )


def _cutoff_ms(age_s: float) -> int:
    return int((time.time() - age_s) * 1000)


def _redrive(args: argparse.Namespace) -> int:
    matches = _chosen(args)

    async def work(stream: DeadLetterStream, settings: Settings) -> int:
        chosen: list[DeadLetter] = [
            letter async for letter in stream.scan(matches, limit=args.limit)
        ]
        console = terminal()
        target = settings.stream_key
        if args.dry_run:
            console.print(
                safe_text(f"would re-drive {_letters(len(chosen))} to {target} (dry run)")
            )
            return 0
        moved = await stream.redrive([letter.id for letter in chosen], stream=target)
        gone = len(chosen) - moved
        console.print(
            safe_text(
                f"re-drove {_letters(moved)} to {target}"
                + (f"; {gone:,} were already gone (re-driven or trimmed meanwhile)" if gone else "")
            )
        )
        return 0

    return _with_stream(args, work)


def _letters(n: int) -> str:
    return f"{n:,} dead letter{'' if n == 1 else 's'}"


def _drop(args: argparse.Namespace) -> int:
    matches = _chosen(args)

    async def work(stream: DeadLetterStream, _settings: Settings) -> int:
        chosen = [letter.id async for letter in stream.scan(matches, limit=args.limit)]
        console = terminal()
        if args.dry_run:
            console.print(safe_text(f"would delete {_letters(len(chosen))} (dry run)"))
            return 0
        deleted = await stream.delete(chosen)
        console.print(safe_text(f"deleted {_letters(deleted)} from {stream.key}"))
        return 0

    return _with_stream(args, work)


def _trim(args: argparse.Namespace) -> int:
    cutoff_ms = _cutoff_ms(args.older_than)
    since = datetime.fromtimestamp(cutoff_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def work(stream: DeadLetterStream, _settings: Settings) -> int:
        console = terminal()
        if args.dry_run:
            n = await stream.count_before(cutoff_ms)
            console.print(safe_text(f"would delete {_letters(n)} added before {since} (dry run)"))
            return 0
        deleted = await stream.trim_before(cutoff_ms)
        console.print(safe_text(f"deleted {_letters(deleted)} added before {since}"))
        return 0

    return _with_stream(args, work)


def _preview(letter: DeadLetter, width: int = 120) -> str:
    text = letter.payload.decode("utf-8", "replace")
    return text if len(text) <= width else text[: width - 1] + "…"
