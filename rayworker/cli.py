"""The ``rayworker`` command.

::

    rayworker replay EVENTS.jsonl|-|--sample [--rules FILE] [--overrides FILE] [--out FILE]
                     [--rejects FILE] [--late FILE] [--batch-size N] [--lateness S]
                     [--suppression S] [--no-progress] [--quiet]
    rayworker rules show [--rules FILE]
    rayworker rules validate FILE [--overrides FILE]
    rayworker --version

``replay`` runs the pure detector in this process over a JSONL file (or standard input) and
writes one alert per line, in a stable order, after the last event. Without ``--out`` the
alerts go to standard output and the summary to standard error; with ``--out`` the summary
goes to standard output.

Exit codes: 0 on success, 2 on a usage error, 1 when an input file, the rules or the overrides
cannot be used (the message is printed as ``error: ...``, without a traceback). Bad *events*
never fail the command: they are counted in the summary and written to ``--rejects``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from rayworker import (
    cli_alerts,
    cli_backtest,
    cli_dead_letters,
    cli_failed_notifications,
    cli_pipeline,
    cli_shards,
    cli_silences,
)
from rayworker.alerts import AlertBook
from rayworker.cli_common import positive_int, positive_seconds, seconds
from rayworker.detect import Detector, DetectorConfig, MetricDeltas
from rayworker.errors import InputError, RayworkerError
from rayworker.rules import builtin_pack, load_overrides, load_rules
from rayworker.settings import load_settings
from rayworker.sources.jsonl import DEFAULT_BATCH_SIZE, JsonlReader

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = ["build_parser", "main"]

PROGRESS_MIN_BYTES = 5 * 1024 * 1024
"""A stream of unknown size gets a progress bar once this many bytes have been read."""
SAMPLE_RESOURCE = "data/sample_events.jsonl"
"""The bundled sample events, relative to the ``rayworker`` package."""

_encode = msgspec.json.Encoder().encode


def _program_version() -> str:
    try:
        return version("rayworker")
    except PackageNotFoundError:
        return "unknown"


# --- argument parsing ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rayworker`` command."""
    parser = argparse.ArgumentParser(
        prog="rayworker",
        description="Real-time security monitoring of multi-tenant audit events.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_program_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    replay = commands.add_parser(
        "replay",
        help="run the detector over a JSONL file of events and write the alerts",
        description=(
            "Run the detector in this process over JSON lines of audit events and write one "
            "alert per line once the input is exhausted."
        ),
    )
    replay.add_argument(
        "events",
        nargs="?",
        metavar="EVENTS.jsonl",
        help="events file, one JSON object per line; - reads standard input",
    )
    replay.add_argument(
        "--sample",
        action="store_true",
        help="replay the bundled sample events (about 20,000 events with attacks)",
    )
    replay.add_argument("--rules", type=Path, metavar="FILE", help="rule pack YAML file")
    replay.add_argument("--overrides", type=Path, metavar="FILE", help="per-tenant overrides")
    replay.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="settings file (TOML/YAML); its integrity section (policies, keys) applies",
    )
    replay.add_argument(
        "--out", type=Path, metavar="FILE", help="write alerts here instead of standard output"
    )
    replay.add_argument(
        "--rejects", type=Path, metavar="FILE", help="write rejected lines here, with reasons"
    )
    replay.add_argument(
        "--late", type=Path, metavar="FILE", help="write events dropped as too late here"
    )
    replay.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"lines per detector batch (default {DEFAULT_BATCH_SIZE:,})",
    )
    defaults = DetectorConfig()
    replay.add_argument(
        "--lateness",
        type=seconds,
        metavar="SECONDS",
        help=(
            "how far behind its tenant's latest event an event may arrive and still count "
            f"(default {defaults.allowed_lateness_s:g})"
        ),
    )
    replay.add_argument(
        "--suppression",
        type=positive_seconds,
        metavar="SECONDS",
        help=(
            "suppression period of the rules that set none of their own "
            f"(default {defaults.suppression_s:g})"
        ),
    )
    replay.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    replay.add_argument("--quiet", action="store_true", help="do not print the summary")
    replay.set_defaults(handler=_replay, subparser=replay)

    rules = commands.add_parser("rules", help="show or validate rule packs")
    rules_commands = rules.add_subparsers(dest="rules_command", metavar="COMMAND", required=True)
    show = rules_commands.add_parser("show", help="print the built-in rule pack (or FILE) as YAML")
    show.add_argument("--rules", type=Path, metavar="FILE", help="rule pack YAML file")
    show.set_defaults(handler=_rules_show)
    validate = rules_commands.add_parser(
        "validate", help="check a rule pack file (and overrides); exit 0 or 1"
    )
    validate.add_argument("rules", type=Path, metavar="FILE", help="rule pack YAML file")
    validate.add_argument("--overrides", type=Path, metavar="FILE", help="per-tenant overrides")
    validate.set_defaults(handler=_rules_validate)
    cli_pipeline.register(commands)
    cli_alerts.register(commands)
    cli_backtest.register(commands)
    cli_silences.register(commands)
    cli_shards.register(commands)
    cli_dead_letters.register(commands)
    cli_failed_notifications.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rayworker`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "replay" and (args.events is None) == (not args.sample):
            args.subparser.error("give exactly one of EVENTS.jsonl, - (standard input), --sample")
        check_args: Callable[[argparse.Namespace], None] | None = getattr(args, "check_args", None)
        if check_args is not None:  # usage rules argparse cannot say (exits 2 like its own)
            check_args(args)
    except SystemExit as exc:  # argparse exits on --help, --version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except RayworkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): stop quietly, as cat does.
        _silence_stdout()
        return 1


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# --- rules -----------------------------------------------------------------------------------


def _rules_show(args: argparse.Namespace) -> int:
    pack = load_rules(args.rules) if args.rules is not None else builtin_pack()
    sys.stdout.write(pack.dump_yaml())
    return 0


def _rules_validate(args: argparse.Namespace) -> int:
    pack = load_rules(args.rules)
    line = f"OK: {len(pack.ids)} rules ({', '.join(pack.ids)})"
    if args.overrides is not None:
        overrides = load_overrides(args.overrides, pack)
        line += f"; overrides OK: {len(overrides.tenants)} tenants"
    print(line)
    return 0


# --- replay ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayStats:
    """What a replay read and found, for the summary."""

    source: str
    events_read: int = 0
    """Non-blank lines read."""
    metrics: MetricDeltas = field(default_factory=MetricDeltas)
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Distinct alerts by (rule id, severity)."""
    alert_tenants: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """Tenants with at least one alert, by (rule id, severity)."""
    elapsed_s: float = 0.0

    def count_alerts(self, book: AlertBook) -> None:
        """Count the final alerts by rule and severity."""
        for alert in book:
            key = (alert.rule_id, alert.severity)
            self.alerts[key] += 1
            self.alert_tenants.setdefault(key, set()).add(alert.tenant_id)


def _replay(args: argparse.Namespace) -> int:
    detector = _build_detector(args)
    started = time.perf_counter()
    alerts_to_stdout = args.out is None
    stderr = Console(file=sys.stderr, highlight=False)
    with ExitStack() as stack:
        source = stack.enter_context(_events_source(args))
        reader = stack.enter_context(JsonlReader(source, batch_size=args.batch_size))
        out = None if alerts_to_stdout else stack.enter_context(_open_output(args.out, "--out"))
        rejects = _maybe_open(stack, args.rejects, "--rejects")
        late = _maybe_open(stack, args.late, "--late")
        show_progress = not args.no_progress and stderr.is_terminal
        with _ProgressBar(reader, stderr, enabled=show_progress) as progress:
            book, stats = _detect_all(reader, detector, progress, rejects=rejects, late=late)
        if args.sample:
            stats.source = f"the bundled sample ({SAMPLE_RESOURCE})"
        if out is None:
            sys.stdout.writelines(_encode(a.to_json()).decode() + "\n" for a in book.sorted())
            sys.stdout.flush()
        else:
            _write_jsonl(out, [a.to_json() for a in book.sorted()])
    stats.count_alerts(book)
    stats.elapsed_s = time.perf_counter() - started
    if not args.quiet:
        summary_file = sys.stderr if alerts_to_stdout else sys.stdout
        render_summary(stats, Console(file=summary_file, highlight=False, markup=False))
    return 0


def _build_detector(args: argparse.Namespace) -> Detector:
    pack = load_rules(args.rules) if args.rules is not None else builtin_pack()
    overrides = load_overrides(args.overrides, pack) if args.overrides is not None else None
    settings: dict[str, Any] = {}
    if args.lateness is not None:
        settings["allowed_lateness_s"] = args.lateness
    if args.suppression is not None:
        settings["suppression_s"] = args.suppression
    # Settings (and so the environment) are read only when asked for: replay stays a pure
    # function of its input files otherwise.
    integrity = load_settings(args.config).integrity.config() if args.config else None
    return Detector(
        pack, overrides=overrides, config=DetectorConfig(**settings), integrity=integrity
    )


def _detect_all(
    reader: JsonlReader,
    detector: Detector,
    progress: _ProgressBar,
    *,
    rejects: BinaryIO | None,
    late: BinaryIO | None,
) -> tuple[AlertBook, ReplayStats]:
    """Run every batch through the detector, then flush it; dead letters go out as they come."""
    book = AlertBook()
    stats = ReplayStats(source=reader.name)
    offset = 0
    for lines in reader:
        result = detector.process_lines(lines, start_index=offset)
        offset += len(lines)
        stats.events_read += len(lines) - lines.count(b"")
        stats.metrics.merge(result.metrics)
        book.update(result.alerts)
        if rejects is not None and result.rejections:
            _write_jsonl(rejects, [r.to_json() for r in result.rejections])
        if late is not None and result.late:
            _write_jsonl(late, [e.to_json() for e in result.late])
        progress.advance()
    final = detector.flush()
    stats.metrics.merge(final.metrics)
    book.update(final.alerts)
    if late is not None and final.late:
        _write_jsonl(late, [e.to_json() for e in final.late])
    return book, stats


def _write_jsonl(stream: BinaryIO, records: list[dict[str, Any]]) -> None:
    stream.write(b"".join(_encode(record) + b"\n" for record in records))


@contextmanager
def _events_source(args: argparse.Namespace) -> Iterator[str | Path | BinaryIO]:
    """The events to read: the path or ``-`` given, or the bundled sample as a real path."""
    if not args.sample:
        yield args.events
        return
    sample = resources.files("rayworker").joinpath(SAMPLE_RESOURCE)
    if not sample.is_file():
        msg = (
            f"the bundled sample rayworker/{SAMPLE_RESOURCE} is missing from this "
            "installation; reinstall rayworker or give an events file"
        )
        raise InputError(msg)
    with resources.as_file(sample) as path:
        yield path


@contextmanager
def _open_output(path: Path, option: str) -> Iterator[BinaryIO]:
    try:
        stream = path.open("wb")
    except OSError as exc:
        msg = f"cannot write {option} file {str(path)!r}: {exc.strerror or exc}"
        raise RayworkerError(msg) from exc
    with stream:
        yield stream


def _maybe_open(stack: ExitStack, path: Path | None, option: str) -> BinaryIO | None:
    return None if path is None else stack.enter_context(_open_output(path, option))


class _ProgressBar:
    """A transient bytes-read progress bar on standard error.

    Shown for a file (its size is known) and, for a stream, once it has passed
    :data:`PROGRESS_MIN_BYTES`; never when disabled (``--no-progress``, no terminal).
    """

    def __init__(self, reader: JsonlReader, console: Console, *, enabled: bool) -> None:
        self._reader = reader
        self._console = console
        self._enabled = enabled
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> _ProgressBar:
        if self._enabled and self._reader.size is not None:
            self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,
        )
        self._task = self._progress.add_task(
            f"replaying {self._reader.name}",
            total=self._reader.size,
            completed=self._reader.bytes_read,
        )
        self._progress.start()

    def advance(self) -> None:
        """Show the bytes read so far."""
        if self._progress is None:
            if not self._enabled or self._reader.bytes_read < PROGRESS_MIN_BYTES:
                return
            self._start()
        if self._progress is not None:
            self._progress.update(self._task, completed=self._reader.bytes_read)

    def stop(self) -> None:
        """Remove the bar (it is transient); safe to call twice."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._enabled = False


# --- summary ---------------------------------------------------------------------------------


def render_summary(stats: ReplayStats, console: Console) -> None:
    """Print the replay summary: counts, rejections by reason and alerts by rule."""
    metrics = stats.metrics
    rejected_by_reason: Counter[str] = Counter()
    for (_tenant, reason), n in metrics.rejected.items():
        rejected_by_reason[reason] += n
    accepted = sum(metrics.events.values())
    rejected = sum(rejected_by_reason.values())

    console.print(f"replay of {stats.source}")
    counts = Table(show_header=False)
    counts.add_column("what")
    counts.add_column("count", justify="right")
    counts.add_row("events read", f"{stats.events_read:,}")
    counts.add_row("accepted", f"{accepted:,}")
    counts.add_row("tenants", f"{len(metrics.events):,}")
    counts.add_row("rejected", f"{rejected:,}")
    for reason, n in sorted(rejected_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        counts.add_row(f"  rejected: {reason}", f"{n:,}")
    counts.add_row("late (reported)", f"{sum(metrics.late.values()):,}")
    counts.add_row("duplicates", f"{sum(metrics.duplicates.values()):,}")
    violations = sum(metrics.integrity_violations.values())
    if violations:
        counts.add_row("integrity violations", f"{violations:,}")
    counts.add_row("naive timestamps (read as UTC)", f"{sum(metrics.naive_timestamps.values()):,}")
    counts.add_row("alerts", f"{sum(stats.alerts.values()):,}")
    counts.add_row("elapsed seconds", f"{stats.elapsed_s:.2f}")
    rate = stats.events_read / stats.elapsed_s if stats.elapsed_s > 0 else 0.0
    counts.add_row("events/s", f"{rate:,.0f}")
    console.print(counts)

    if stats.alerts:
        alerts = Table(title="alerts by rule", title_justify="left")
        alerts.add_column("rule")
        alerts.add_column("severity")
        alerts.add_column("alerts", justify="right")
        alerts.add_column("tenants", justify="right")
        for (rule_id, severity), n in sorted(stats.alerts.items()):
            tenants = len(stats.alert_tenants.get((rule_id, severity), ()))
            alerts.add_row(rule_id, severity, f"{n:,}", f"{tenants:,}")
        console.print(alerts)
