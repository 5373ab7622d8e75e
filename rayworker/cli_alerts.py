"""The ``rayworker alerts`` and ``rayworker db`` commands: read and triage stored alerts.

::

    rayworker alerts list --tenant T [--status S|all] [--severity S] [--rule R]
                          [--sort newest|severity] [--limit N] [--cursor C | --offset N] [--json]
    rayworker alerts show --tenant T ALERT_ID [--json]
    rayworker alerts ack --tenant T ALERT_ID --by WHO
    rayworker alerts resolve|dismiss|reopen --tenant T ALERT_ID --by WHO [--note TEXT]
    rayworker alerts stats --tenant T [--json]
    rayworker alerts cleanup --tenant T --older-than-days N
    rayworker db migrate
    rayworker db status

Every command takes ``--alerts-dsn DSN``; without it the store is the one the settings name
(``RAYWORKER_ALERTS_DSN``, default ``sqlite:///rayworker-alerts.db``). A DSN is only ever
printed with its password replaced by ``***``.

The ``alerts`` commands need a migrated store (``rayworker db migrate`` first) and never
create a SQLite file. Every read and action is scoped by ``--tenant``: another tenant's alert
is reported exactly like an unknown id. ``list`` prints the next page's ``--cursor`` (or
``--offset``) on standard error when there is one, so ``--json`` output stays pure JSON lines.

Exit codes: 0 on success; 1 on an error (unknown alert, illegal lifecycle transition, store
unreachable or not migrated; raised as :class:`~rayworker.errors.RayworkerError` and printed
by :func:`rayworker.cli.main` as ``error: ...``), and for ``db status`` when migrations are
pending; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import json
import os
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from rich.table import Table
from rich.text import Text

from rayworker.cli_common import (
    non_empty,
    require_sqlite_file,
    safe_text,
    store_settings,
    terminal,
    utc_when,
)
from rayworker.errors import SinkError
from rayworker.settings import Settings, redact_dsn
from rayworker.sinks.alert_store import (
    MAX_LIMIT,
    SEVERITIES,
    SORTS,
    STATUSES,
    AlertStats,
    Cursor,
    MigrationError,
    StoredAlert,
    Transition,
    dt_to_us,
    not_found,
    us_to_dt,
)
from rayworker.sinks.factory import alert_store, sqlite_path
from rayworker.sinks.migrate import (
    Dialect,
    MigrationStatus,
    check_postgres,
    check_sqlite,
    load_migrations,
    migrate_postgres,
    migrate_sqlite,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from rayworker.sinks.alert_store import Action, AlertStore

__all__ = ["decode_cursor", "encode_cursor", "register"]

DEFAULT_LIMIT: Final = 50
_NOTIFY_TIMEOUT_S: Final = 10.0
_ACTIONS: Final[dict[str, tuple[Action, str, str]]] = {
    # command: (store action, past tense, help)
    "ack": ("acknowledge", "acknowledged", "acknowledge an active alert"),
    "resolve": ("resolve", "resolved", "resolve an active or acknowledged alert"),
    "dismiss": ("dismiss", "dismissed", "dismiss an active or acknowledged alert (false positive)"),
    "reopen": ("reopen", "reopened", "make an acknowledged, resolved or dismissed alert active"),
}
# Characters a terminal would act on (escape sequences, bidi overrides): shown escaped.


# --- argument types ---------------------------------------------------------------------------


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        msg = f'Got "{text}"; give a whole number from 1 to {MAX_LIMIT}'
        raise argparse.ArgumentTypeError(msg)
    return value


def _count(text: str, *, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        msg = f'Got "{text}"; give a whole number of at least {least}'
        raise argparse.ArgumentTypeError(msg)
    return value


def _offset(text: str) -> int:
    return _count(text, least=0)


def _days(text: str) -> int:
    return _count(text, least=1)


def _severity(text: str) -> str:
    value = text.upper()
    if value not in SEVERITIES:
        msg = f'Got "{text}" for --severity; use one of {", ".join(reversed(SEVERITIES))}'
        raise argparse.ArgumentTypeError(msg)
    return value


def encode_cursor(cursor: Cursor) -> str:
    """An opaque, shell-safe ``--cursor`` value for a keyset position."""
    raw = json.dumps([dt_to_us(cursor.last_seen), cursor.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The position an :func:`encode_cursor` value names; ``ArgumentTypeError`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        last_seen_us, alert_id = json.loads(raw)
        if not isinstance(last_seen_us, int) or not isinstance(alert_id, str):
            raise TypeError  # the one message below, for every malformed cursor
        return Cursor(us_to_dt(last_seen_us), alert_id)
    except (ValueError, TypeError, OverflowError, binascii.Error):
        msg = f'Got "{text}" for --cursor; pass the value a previous `alerts list` printed'
        raise argparse.ArgumentTypeError(msg) from None


# --- registration ----------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``alerts`` and ``db`` commands to the ``rayworker`` parser's subcommands."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--alerts-dsn",
        metavar="DSN",
        help="alert store, e.g. postgresql://user@host:5432/db or sqlite:///path "
        "(default: RAYWORKER_ALERTS_DSN, else sqlite:///rayworker-alerts.db)",
    )
    tenant = argparse.ArgumentParser(add_help=False, parents=[store])
    tenant.add_argument("--tenant", required=True, type=non_empty, help="the tenant whose alerts")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    alerts = commands.add_parser("alerts", help="list, show and triage stored alerts")
    sub = alerts.add_subparsers(dest="alerts_command", metavar="COMMAND", required=True)

    listing = sub.add_parser(
        "list",
        parents=[tenant, as_json],
        help="the tenant's alerts, newest first, one page at a time",
        description="List the tenant's alerts, newest last_seen first (or by severity).",
    )
    listing.add_argument(
        "--status", choices=(*STATUSES, "all"), default="all", help="only this status (all)"
    )
    listing.add_argument(
        "--severity", type=_severity, help=f"only this severity ({', '.join(SEVERITIES)})"
    )
    listing.add_argument("--rule", metavar="RULE_ID", help="only alerts of this rule")
    listing.add_argument(
        "--sort", choices=SORTS, default="newest", help="newest first, or CRITICAL first"
    )
    listing.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"alerts per page (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})",
    )
    page = listing.add_mutually_exclusive_group()
    page.add_argument(
        "--cursor", type=decode_cursor, metavar="C", help="continue after this position"
    )
    page.add_argument("--offset", type=_offset, default=0, metavar="N", help="skip N alerts")
    listing.set_defaults(handler=_list)

    show = sub.add_parser(
        "show", parents=[tenant, as_json], help="one alert with its evidence and history"
    )
    show.add_argument("alert_id", metavar="ALERT_ID")
    show.set_defaults(handler=_show)

    for name, (action, _past, text) in _ACTIONS.items():
        act = sub.add_parser(name, parents=[tenant], help=text)
        act.add_argument("alert_id", metavar="ALERT_ID")
        act.add_argument(
            "--by", required=True, type=non_empty, help="who does it (user or service)"
        )
        if action != "acknowledge":  # the store records no note with an acknowledgement
            act.add_argument("--note", help="why; kept with the alert and its history")
        act.set_defaults(handler=_act, action=action, note=None)

    stats = sub.add_parser(
        "stats", parents=[tenant, as_json], help="counts by status, severity and rule; trends"
    )
    stats.set_defaults(handler=_stats)

    cleanup = sub.add_parser(
        "cleanup", parents=[tenant], help="delete old resolved and dismissed alerts"
    )
    cleanup.add_argument(
        "--older-than-days",
        type=_days,
        required=True,
        metavar="N",
        help="delete alerts resolved or dismissed more than N days ago (with their history)",
    )
    cleanup.set_defaults(handler=_cleanup)

    db = commands.add_parser("db", help="migrate the alert store's schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    migrate = db_sub.add_parser("migrate", parents=[store], help="apply pending migrations")
    migrate.set_defaults(handler=_db_migrate)
    status = db_sub.add_parser(
        "status", parents=[store], help="applied and pending migrations; exit 1 if any pending"
    )
    status.set_defaults(handler=_db_status)


# --- plumbing --------------------------------------------------------------------------------


def _shown_dsn(settings: Settings) -> str:
    return redact_dsn(settings.alerts_dsn.get_secret_value())


def _with_store(args: argparse.Namespace, work: Callable[[AlertStore], Awaitable[int]]) -> int:
    """Open the migrated store, run ``work`` on it and always close it."""
    settings = store_settings(args)
    require_sqlite_file(settings)

    async def run() -> int:
        store = alert_store(settings, pool_size=1)
        try:
            await store.open(migrate=False)
        except MigrationError as exc:
            msg = f"{exc} (from the command line: rayworker db migrate)"
            raise MigrationError(msg) from exc
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _group(group: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in group.items())


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def alert_json(alert: StoredAlert) -> dict[str, Any]:
    """A stored alert as JSON-ready data (times as ISO 8601 UTC)."""
    data: dict[str, Any] = _plain(dataclasses.asdict(alert))
    return data


def _transition_json(record: Transition) -> dict[str, Any]:
    data: dict[str, Any] = _plain(dataclasses.asdict(record))
    return data


def _write_json(data: object) -> None:
    # ensure_ascii: a control or bidi character in an alert reaches the terminal escaped.
    sys.stdout.write(json.dumps(data) + "\n")


# --- alerts list / show ----------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {
        "status": None if args.status == "all" else args.status,
        "severity": args.severity,
        "rule_id": args.rule,
        "sort": args.sort,
    }

    async def work(store: AlertStore) -> int:
        rows = await store.list(
            args.tenant, **filters, limit=args.limit, offset=args.offset, after=args.cursor
        )
        hint = None
        if len(rows) == args.limit:
            if args.sort == "newest" and args.offset == 0:
                after = rows[-1].cursor
                if await store.list(args.tenant, **filters, limit=1, after=after):
                    hint = f"--cursor {encode_cursor(after)}"
            else:
                offset = args.offset + len(rows)
                if await store.list(args.tenant, **filters, limit=1, offset=offset):
                    hint = f"--offset {offset}"
        _print_list(rows, args)
        if hint is not None:
            sys.stderr.write(f"more alerts: next page with {hint}\n")
        return 0

    return _with_store(args, work)


def _print_list(rows: list[StoredAlert], args: argparse.Namespace) -> None:
    if args.json:
        for row in rows:
            _write_json(alert_json(row))
        return
    console = terminal()
    if not rows:
        console.print(safe_text(f"no alerts for tenant {args.tenant} match"))
        return
    table = Table()
    table.add_column("id", overflow="fold")
    table.add_column("severity", no_wrap=True)
    table.add_column("rule", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("group", overflow="fold")
    table.add_column("hits", justify="right", no_wrap=True)
    table.add_column("first seen", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    for r in rows:
        table.add_row(
            safe_text(r.id),
            safe_text(r.severity),
            safe_text(r.rule_id),
            r.status,
            safe_text(_group(r.group)),
            f"{r.occurrences:,}",
            utc_when(r.first_seen),
            utc_when(r.last_seen),
        )
    console.print(table)


def _show(args: argparse.Namespace) -> int:
    async def work(store: AlertStore) -> int:
        row = await store.get(args.tenant, args.alert_id)
        if row is None:
            raise not_found(args.alert_id)
        history = await store.transitions(args.tenant, args.alert_id)
        if args.json:
            _write_json({**alert_json(row), "transitions": [_transition_json(t) for t in history]})
        else:
            _print_alert(row, history)
        return 0

    return _with_store(args, work)


def _print_alert(row: StoredAlert, history: list[Transition]) -> None:
    console = terminal()
    fields = Table(show_header=False, title=safe_text(row.title), title_justify="left")
    fields.add_column("field")
    fields.add_column("value", overflow="fold")
    plain: list[tuple[str, object]] = [
        ("id", row.id),
        ("tenant", row.tenant_id),
        ("status", row.status),
        ("severity", row.severity),
        ("rule", f"{row.rule_id} ({row.rule_version})"),
        ("type", row.type),
        ("description", row.description),
        ("group", _group(row.group)),
        ("occurrences", f"{row.occurrences:,} (count {row.count:,})"),
        ("first seen", utc_when(row.first_seen)),
        ("last seen", utc_when(row.last_seen)),
        ("fingerprint", row.fingerprint),
        ("source", row.source),
        ("tags", ", ".join(row.tags)),
        ("metadata", json.dumps(row.metadata)),
        ("evidence window", json.dumps(row.evidence_window)),
        ("trace id", row.trace_id or "-"),
        ("created", utc_when(row.created_at)),
        ("updated", utc_when(row.updated_at)),
    ]
    if row.acknowledged:
        plain.append(("acknowledged", f"{utc_when(row.acknowledged_at)} by {row.acknowledged_by}"))
    if row.resolved:
        plain.append((row.status, f"{utc_when(row.resolved_at)} by {row.resolved_by}"))
        plain.append(("notes", row.resolution_notes or "-"))
    for name, value in plain:
        fields.add_row(name, safe_text(value))
    console.print(fields)
    console.print(f"evidence: {len(row.evidence)} events")
    for event_id in row.evidence:
        console.print(Text("  ") + safe_text(event_id))
    if not history:
        console.print("lifecycle: no transitions yet")
        return
    lifecycle = Table(title="lifecycle", title_justify="left")
    for name in ("at", "from", "to", "by", "note"):
        lifecycle.add_column(name, overflow="fold")
    for t in history:
        lifecycle.add_row(
            utc_when(t.at), t.from_status, t.to_status, safe_text(t.by), safe_text(t.note or "")
        )
    console.print(lifecycle)


# --- alerts ack / resolve / dismiss / reopen -------------------------------------------------


def _act(args: argparse.Namespace) -> int:
    action: Action = args.action

    async def work(store: AlertStore) -> int:
        tenant, alert_id, by, note = args.tenant, args.alert_id, args.by, args.note
        if action == "acknowledge":
            row = await store.acknowledge(tenant, alert_id, by=by)
        elif action == "resolve":
            row = await store.resolve(tenant, alert_id, by=by, notes=note)
        elif action == "dismiss":
            row = await store.dismiss(tenant, alert_id, by=by, notes=note)
        else:
            row = await store.reopen(tenant, alert_id, by=by, note=note)
        past = _ACTIONS[args.alerts_command][1]
        terminal().print(safe_text(f"alert {row.id} {past} by {by}; status is now {row.status}"))
        if row.status in ("resolved", "dismissed"):
            _tell_notifier(store_settings(args), alert_json(row))
        return 0

    return _with_store(args, work)


def _tell_notifier(settings: Settings, alert: dict[str, Any]) -> None:
    """Hand a resolved or dismissed alert to the running pipeline's notifier, so routes with
    ``send_resolved`` say so now rather than after ``resolve_timeout``.

    Best effort: the change is already stored; without a reachable cluster (``RAY_ADDRESS``)
    or notifier this says why and the notifier resolves the alert by timeout instead.
    """
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        return
    # Imported here: Ray costs a second to import, which the other commands need not pay.
    import ray  # noqa: PLC0415

    from rayworker.pipeline.notifier import notifier_handle  # noqa: PLC0415
    from rayworker.pipeline.runtime import connect_ray  # noqa: PLC0415

    try:
        connect_ray(address, namespace=settings.ray_namespace)
        notifier = notifier_handle(settings.ray_namespace)
        if notifier is None:
            return
        queued = ray.get(notifier.enqueue.remote([alert]), timeout=_NOTIFY_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the transition stands; only the push failed
        print(
            f"warning: the notifier was not told ({type(exc).__name__}); it will resolve the "
            "alert after its resolve_timeout",
            file=sys.stderr,
        )
        return
    if not queued:
        print(
            "warning: the notifier's queue is full; it will resolve the alert by timeout",
            file=sys.stderr,
        )


# --- alerts stats / cleanup ------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    async def work(store: AlertStore) -> int:
        stats = await store.stats(args.tenant, now=datetime.now(UTC))
        if args.json:
            _write_json(stats_json(stats))
        else:
            _print_stats(args.tenant, stats)
        return 0

    return _with_store(args, work)


def stats_json(stats: AlertStats) -> dict[str, Any]:
    """Alert statistics as JSON-ready data."""
    return {
        "total": stats.total,
        "active": stats.active,
        "by_status": stats.by_status,
        "by_severity": stats.by_severity,
        "by_rule": stats.by_rule,
        "trends": [dataclasses.asdict(t) for t in stats.trends],
    }


def _print_stats(tenant: str, stats: AlertStats) -> None:
    console = terminal()
    console.print(
        safe_text(f"tenant {tenant}: {stats.total:,} alerts, {stats.active:,} need attention")
    )
    for title, counts in (
        ("by status", stats.by_status),
        ("by severity", {s: stats.by_severity.get(s, 0) for s in reversed(SEVERITIES)}),
        ("by rule", dict(sorted(stats.by_rule.items(), key=lambda kv: (-kv[1], kv[0])))),
    ):
        table = Table(title=title, title_justify="left")
        table.add_column(title.removeprefix("by "), overflow="fold")
        table.add_column("alerts", justify="right")
        for name, n in counts.items():
            table.add_row(safe_text(name), f"{n:,}")
        console.print(table)
    trends = Table(title="trends", title_justify="left")
    trends.add_column("period")
    trends.add_column("created", justify="right")
    trends.add_column("resolved or dismissed", justify="right")
    for point in stats.trends:
        trends.add_row(f"last {point.period}", f"{point.created:,}", f"{point.resolved:,}")
    console.print(trends)


def _cleanup(args: argparse.Namespace) -> int:
    days: int = args.older_than_days

    async def work(store: AlertStore) -> int:
        deleted = await store.cleanup_resolved(
            args.tenant, older_than=timedelta(days=days), now=datetime.now(UTC)
        )
        terminal().print(
            safe_text(
                f"deleted {deleted:,} alerts of tenant {args.tenant} resolved or dismissed "
                f"more than {days} days ago"
            )
        )
        return 0

    return _with_store(args, work)


# --- db migrate / status ---------------------------------------------------------------------


def _db_migrate(args: argparse.Namespace) -> int:
    settings = store_settings(args)
    applied, status = asyncio.run(_migrations(settings, apply=True))
    console = terminal()
    where = _shown_dsn(settings)
    if applied:
        names = {m.version: m.name for m in load_migrations(_dialect(settings))}
        console.print(safe_text(f"applied {len(applied)} migration(s) to {where}:"))
        for version in applied:
            console.print(safe_text(f"  {names.get(version, f'{version:04d}')}"))
    else:
        console.print(safe_text(f"{where}: up to date ({len(status.applied)} migrations applied)"))
    return 0


def _db_status(args: argparse.Namespace) -> int:
    settings = store_settings(args)
    _, status = asyncio.run(_migrations(settings, apply=False))
    console = terminal()
    console.print(safe_text(f"{_shown_dsn(settings)}: {status.describe()}"))
    for migration in status.pending:
        console.print(safe_text(f"  pending: {migration.name}"))
    if not status.up_to_date:
        console.print("apply them with `rayworker db migrate`")
    return 0 if status.up_to_date else 1


def _dialect(settings: Settings) -> Dialect:
    return "sqlite" if settings.alerts_backend == "sqlite" else "postgres"


async def _migrations(
    settings: Settings, *, apply: bool
) -> tuple[tuple[int, ...], MigrationStatus]:
    """(versions applied now, status after) of the store ``settings`` name."""
    dsn = settings.alerts_dsn.get_secret_value()
    if settings.alerts_backend == "sqlite":
        return await asyncio.to_thread(_sqlite_migrations, sqlite_path(dsn), apply=apply)
    if settings.alerts_backend != "postgresql":
        alert_store(settings)  # raises the factory's ConfigError for an unsupported backend
    return await _postgres_migrations(dsn, apply=apply)


def _sqlite_migrations(path: str, *, apply: bool) -> tuple[tuple[int, ...], MigrationStatus]:
    if not apply and path != ":memory:" and not Path(path).is_file():
        # Report without creating the file.
        return (), MigrationStatus((), load_migrations("sqlite"))
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        msg = f"could not open the SQLite alert store at {path}: {exc}"
        raise SinkError(msg) from exc
    try:
        applied = migrate_sqlite(conn) if apply else ()
        return applied, check_sqlite(conn)
    except sqlite3.Error as exc:
        msg = f"could not migrate the SQLite alert store at {path}: {exc}"
        raise SinkError(msg) from exc
    finally:
        conn.close()


async def _postgres_migrations(dsn: str, *, apply: bool) -> tuple[tuple[int, ...], MigrationStatus]:
    import asyncpg  # noqa: PLC0415 - optional: only a PostgreSQL store needs it

    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        # The DSN stays out of the message; the exception type says what failed.
        msg = (
            f"could not connect to the PostgreSQL alert store ({type(exc).__name__});"
            " check the DSN, that the server is up and that the role may log in"
        )
        raise SinkError(msg) from exc
    try:
        applied = await migrate_postgres(conn) if apply else ()
        return applied, await check_postgres(conn)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        msg = f"PostgreSQL migration failed: {type(exc).__name__}: {exc}"
        raise SinkError(msg) from exc
    finally:
        await conn.close()
