"""The ``rayworker failed-notifications`` command: the notifier's dead letters.

::

    rayworker failed-notifications stats [--notify FILE] [--json]
    rayworker failed-notifications list [--notify FILE] [--tenant T] [--receiver R]
                                        [--reason R] [--older-than AGE] [--limit N] [--json]
    rayworker failed-notifications redrive [--notify FILE] (--id ID ... | --tenant T |
                                           --receiver R | --reason R | --older-than AGE |
                                           --all) [--limit N] [--dry-run]
    rayworker failed-notifications drop [--notify FILE] (the same choices) [--dry-run]
    rayworker failed-notifications trim [--notify FILE] --older-than AGE [--dry-run]

The store is the one the notification config names (``dead_letter.redis_url`` and
``dead_letter.stream``, else the file ``dead_letter.path``; a relative path is taken from the
directory rayworker runs in). The config is ``--notify FILE``, else the settings'
``notify_path`` (``RAYWORKER_NOTIFY_PATH`` or ``--config``). ``redrive`` sends each chosen
notification once more to its own tenant's receiver, with its original idempotency key, and
deletes the record once the receiver took it; one that fails again stays (as the newest
record, counting its failed re-drives, with the last error), and the command says why
(:mod:`rayworker.notify.failed`). ``drop`` deletes chosen records without sending.
``--older-than AGE`` chooses records that first failed more than AGE ago (``30d``, ``12h``);
``trim --older-than AGE`` is retention: it drops every such record. A Redis stream is also
trimmed to about ``dead_letter.maxlen`` records on each write; a file only by ``trim``.

Exit codes: 0 on success; 1 on an error, or when a re-drive left records that failed again
(printed as ``error: ...`` or in the table); 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from redis.exceptions import RedisError
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
from rayworker.errors import ConfigError, SinkError
from rayworker.notify.config import NotifyConfig, load_notify_config
from rayworker.notify.failed import (
    FailedFilter,
    FailedNotification,
    FailedStore,
    failed_store,
    redrive,
)
from rayworker.settings import load_settings

__all__ = ["register"]

_REASONS = ["circuit_open", "crashed", "rejected", "retries_exhausted", "shutdown"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``failed-notifications`` command to the ``rayworker`` parser's subcommands."""
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--notify", type=Path, metavar="FILE", help="the notification config (YAML or JSON)"
    )
    source.add_argument("--config", type=Path, help="TOML or YAML settings file naming notify_path")
    chosen = argparse.ArgumentParser(add_help=False)
    chosen.add_argument("--tenant", type=non_empty, help="only this tenant's records")
    chosen.add_argument("--receiver", type=non_empty, help="only records for this receiver")
    chosen.add_argument("--reason", choices=_REASONS, help="only records with this reason")
    chosen.add_argument(
        "--older-than",
        type=age,
        metavar="AGE",
        help="only records that failed more than AGE ago (e.g. 30d, 12h, 90m)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON lines, not a table")

    failed = commands.add_parser(
        "failed-notifications",
        help="inspect, re-send and drop notifications that could not be delivered",
    )
    sub = failed.add_subparsers(
        dest="failed_notifications_command", metavar="COMMAND", required=True
    )

    stats = sub.add_parser(
        "stats",
        parents=[source, as_json],
        help="how many records, by tenant, receiver and reason",
    )
    stats.set_defaults(handler=_stats)

    add_listing(sub, [source, chosen, as_json]).set_defaults(handler=_list)

    again = sub.add_parser(
        "redrive",
        parents=[source, chosen],
        help="send records again and delete the delivered ones",
        description=(
            "Send each chosen notification once more to its tenant's receiver (as configured "
            "now), with its original idempotency key, and delete each record the receiver "
            "took. Choose with --id, --tenant, --receiver, --reason and --older-than (all "
            "must match), or --all."
        ),
    )
    drop = sub.add_parser(
        "drop",
        parents=[source, chosen],
        help="delete records without sending them",
        description=(
            "Delete the chosen records. Choose with --id, --tenant, --receiver, --reason and "
            "--older-than (all must match), or --all."
        ),
    )
    for parser, verb, done in ((again, "send", "sent"), (drop, "delete", "deleted")):
        add_record_choice(
            parser,
            narrowing=("tenant", "receiver", "reason", "older_than"),
            record_id=non_empty,
            verb=verb,
            done=done,
        )
    again.set_defaults(handler=_redrive)
    drop.set_defaults(handler=_drop)

    trim = add_trim(
        sub,
        source,
        "Delete every record that failed more than AGE ago, whatever its tenant or receiver "
        "(the same as `drop --older-than AGE`).",
    )
    trim.set_defaults(handler=_drop, tenant=None, receiver=None, reason=None, ids=None, limit=None)


def _notify_config(args: argparse.Namespace) -> NotifyConfig:
    path = args.notify
    if path is None:
        path = load_settings(args.config).notify_path
    if path is None:
        msg = (
            "no notification config: pass --notify FILE, or set RAYWORKER_NOTIFY_PATH "
            "(or notify_path in --config)"
        )
        raise ConfigError(msg)
    return load_notify_config(path)


def _with_store(
    args: argparse.Namespace,
    work: Callable[[FailedStore, NotifyConfig], Awaitable[int]],
) -> int:
    config = _notify_config(args)

    async def run() -> int:
        store = failed_store(config.dead_letter)
        try:
            return await work(store, config)
        except (RedisError, OSError) as exc:
            msg = (
                f"cannot reach the failed notifications in {store.where}: "
                f"{type(exc).__name__}: {exc}"
            )
            raise SinkError(msg) from None
        finally:
            await store.close()

    return asyncio.run(run())


def _chosen(args: argparse.Namespace) -> FailedFilter:
    return FailedFilter(
        tenant=args.tenant,
        receiver=args.receiver,
        reason=args.reason,
        ids=frozenset(args.ids) if getattr(args, "ids", None) else None,
        before=None if args.older_than is None else time.time() - args.older_than,
    )


def _records(n: int) -> str:
    return f"{n:,} failed notification{'' if n == 1 else 's'}"


def _stats(args: argparse.Namespace) -> int:
    async def work(store: FailedStore, _config: NotifyConfig) -> int:
        found = await store.scan(FailedFilter())
        bad = await store.unreadable()
        counts = Counter((f.tenant, f.receiver, f.reason) for f in found)
        rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        if args.json:
            for (tenant, receiver, reason), n in rows:
                line = {"tenant": tenant, "receiver": receiver, "reason": reason, "count": n}
                sys.stdout.write(json.dumps(line) + "\n")
            return 0
        console = terminal()
        if bad:
            console.print(
                safe_text(f"{store.where}: {bad:,} entries are not records (left as they are)")
            )
        if not rows:
            console.print(safe_text(f"{store.where}: no failed notifications"))
            return 0
        table = Table(title=safe_text(f"{store.where}: {_records(len(found))}"))
        for name in ("tenant", "receiver", "reason", "count"):
            table.add_column(name, justify="right" if name == "count" else "left")
        for (tenant, receiver, reason), n in rows:
            table.add_row(safe_text(tenant), safe_text(receiver), reason, f"{n:,}")
        console.print(table)
        return 0

    return _with_store(args, work)


def _list(args: argparse.Namespace) -> int:
    matches = _chosen(args)

    async def work(store: FailedStore, _config: NotifyConfig) -> int:
        found = await store.scan(matches, limit=args.limit)
        if args.json:
            for failed in found:
                sys.stdout.write(json.dumps(failed.to_json(), default=str) + "\n")
            return 0
        console = terminal()
        if not found:
            console.print(safe_text(f"{store.where}: no matching failed notifications"))
            return 0
        # Two lines a record (not a table): the error is long and a table folds it into a
        # column a few characters wide on an 80-column terminal.
        for failed in found:
            at = utc_second(str(failed.record.get("failed_at", "")))
            console.print(
                safe_text(
                    f"{failed.id}  {at}  {failed.tenant} -> {failed.receiver}  {failed.reason}"
                )
            )
            console.print(safe_text(f"    {_alerts(failed)}: {failed.record.get('error', '')}"))
            if failed.redrive_failures:
                console.print(safe_text(f"    {_failed_again(failed)}"))
        return 0

    return _with_store(args, work)


def _failed_again(failed: FailedNotification) -> str:
    n = failed.redrive_failures
    last = utc_second(str(failed.record.get("last_failed_at", "")))
    error = failed.record.get("last_error", "")
    return f"{n:,} re-drive{'' if n == 1 else 's'} failed, the last at {last}: {error}"


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _alerts(failed: FailedNotification) -> str:
    ids = failed.record.get("alert_ids")
    n = len(ids) if isinstance(ids, list) else 0
    return f"{n:,} alert{'' if n == 1 else 's'}"


def _redrive(args: argparse.Namespace) -> int:
    matches = _chosen(args)

    async def work(store: FailedStore, config: NotifyConfig) -> int:
        chosen = await store.scan(matches, limit=args.limit)
        console = terminal()
        if args.dry_run:
            console.print(safe_text(f"would send {_records(len(chosen))} again (dry run)"))
            return 0
        report = await redrive(store, chosen, config)
        if report.failed or report.skipped:
            console.print("not delivered (kept):")
            for failed, why in [*report.failed, *report.skipped]:
                console.print(
                    safe_text(f"{failed.id}  {failed.tenant} -> {failed.receiver}: {why}")
                )
        sent = len(report.sent)
        summary = (
            f"sent {_records(sent)} again and deleted {'it' if sent == 1 else 'them'} from "
            f"{store.where}"
            if sent
            else f"sent none of {_records(len(chosen))} again"
        )
        if report.failed:
            summary += f"; kept {len(report.failed):,} that failed again"
        if report.skipped:
            summary += f"; kept {len(report.skipped):,} not tried after their receiver failed"
        if report.busy:
            summary += (
                f"; left {len(report.busy):,} to another re-drive that had them (or sent them)"
            )
        console.print(safe_text(summary))
        return 1 if report.failed or report.skipped else 0

    return _with_store(args, work)


def _drop(args: argparse.Namespace) -> int:
    matches = _chosen(args)

    async def work(store: FailedStore, _config: NotifyConfig) -> int:
        chosen = [failed.id for failed in await store.scan(matches, limit=args.limit)]
        console = terminal()
        if args.dry_run:
            console.print(safe_text(f"would delete {_records(len(chosen))} (dry run)"))
            return 0
        deleted = await store.remove(chosen)
        since = "" if matches.before is None else f" that failed before {_utc(matches.before)}"
        console.print(safe_text(f"deleted {_records(deleted)}{since} from {store.where}"))
        return 0

    return _with_store(args, work)
