"""``rayworker backtest``: sweep a rule's threshold and window over recorded events.

::

    rayworker backtest EVENTS.jsonl|--sample --rule ID --sweep threshold=3..20
                       [--sweep window=1m,5m,15m] [--labels LABELS.jsonl] [--out results.csv]
                       [--budget N] [--overrides-out FILE] [--rules FILE] [--overrides FILE]
                       [--ray] [--detector] [--no-progress] [--quiet]

The events are read once; every point is evaluated over them (see :mod:`rayworker.backtest`)
in this process, or as Ray tasks with ``--ray`` or when ``RAY_ADDRESS`` is set. The table of
points goes to standard output (and ``--out`` as CSV); with ``--budget`` the per-tenant
suggestions follow, and ``--overrides-out`` writes them as an overrides file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from rayworker.backtest import (
    BacktestResult,
    Batches,
    LocalRunner,
    Runner,
    load_labels,
    run_backtest,
)
from rayworker.backtest_points import parse_sweep
from rayworker.backtest_suggest import Suggestion, suggest, suggested_overrides, write_overrides
from rayworker.cli_common import positive_int, positive_seconds, seconds
from rayworker.detect import DetectorConfig
from rayworker.errors import InputError, RayworkerError
from rayworker.rules import builtin_pack, format_duration, load_overrides, load_rules
from rayworker.sources.jsonl import DEFAULT_BATCH_SIZE, JsonlReader

__all__ = ["register"]

_SAMPLE = "data/sample_events.jsonl"


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        msg = f'Got "{text}"; give the alerts per tenant per day allowed, a number >= 0'
        raise argparse.ArgumentTypeError(msg)
    return value


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backtest`` to the ``rayworker`` command."""
    parser = commands.add_parser(
        "backtest",
        help="sweep a rule's threshold and window over recorded events",
        description=(
            "Evaluate every point of a threshold/window sweep of one rule over the same events "
            "(read once, then vectorised with NumPy; the detector once per point only where a "
            "key's state could reach its cap). Each point's alerts equal those of "
            "`rayworker replay` with that threshold and window."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("events", nargs="?", metavar="EVENTS.jsonl", help="events file (JSONL)")
    source.add_argument("--sample", action="store_true", help="the bundled sample events")
    parser.add_argument("--rule", required=True, metavar="ID", help="the rule to sweep")
    parser.add_argument(
        "--sweep",
        action="append",
        required=True,
        metavar="PARAM=VALUES",
        help="threshold=3..20, threshold=5,10,20..40:10 or window=1m,5m,15m (repeat per param)",
    )
    parser.add_argument("--labels", type=Path, metavar="FILE", help="labelled attacks (JSONL)")
    parser.add_argument(
        "--label-scenario",
        action="append",
        metavar="NAME",
        help="scenarios of the labels that count for this rule (default: the rule id; repeat)",
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the points as CSV here")
    parser.add_argument(
        "--budget",
        type=_budget,
        metavar="N",
        help="alerts per tenant per day: suggest each tenant's lowest threshold within it",
    )
    parser.add_argument(
        "--overrides-out", type=Path, metavar="FILE", help="write the suggestions (needs --budget)"
    )
    parser.add_argument("--rules", type=Path, metavar="FILE", help="rule pack YAML file")
    parser.add_argument("--overrides", type=Path, metavar="FILE", help="base per-tenant overrides")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"lines per batch (default {DEFAULT_BATCH_SIZE:,})",
    )
    parser.add_argument(
        "--lateness", type=seconds, metavar="SECONDS", help="allowed lateness, as for replay"
    )
    parser.add_argument(
        "--suppression",
        type=positive_seconds,
        metavar="SECONDS",
        help="default suppression period, as for replay",
    )
    parser.add_argument(
        "--ray", action="store_true", help="run the points as Ray tasks (also when RAY_ADDRESS)"
    )
    parser.add_argument(
        "--detector",
        action="store_true",
        help="run every point on the detector (slow: the reference the NumPy path equals)",
    )
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    parser.add_argument("--quiet", action="store_true", help="print no tables")
    parser.set_defaults(handler=_backtest)


def _backtest(args: argparse.Namespace) -> int:
    if args.overrides_out is not None and args.budget is None:
        print(
            "error: --overrides-out needs --budget N (alerts per tenant per day)", file=sys.stderr
        )
        return 2
    pack = load_rules(args.rules) if args.rules is not None else builtin_pack()
    base = load_overrides(args.overrides, pack) if args.overrides is not None else None
    sweep = parse_sweep(args.sweep)
    settings: dict[str, Any] = {}
    if args.lateness is not None:
        settings["allowed_lateness_s"] = args.lateness
    if args.suppression is not None:
        settings["suppression_s"] = args.suppression
    config = DetectorConfig(**settings)
    labels = load_labels(args.labels) if args.labels is not None else None
    runner: Runner = LocalRunner()
    if args.ray or os.environ.get("RAY_ADDRESS"):
        from rayworker.backtest_ray import RayRunner  # noqa: PLC0415 - Ray only when asked

        runner = RayRunner()
    stderr = Console(file=sys.stderr, highlight=False)
    with _events_path(args) as path, _Bars(stderr, enabled=not args.no_progress) as bars:
        result = run_backtest(
            bars.reading(path, args.batch_size),
            pack,
            args.rule,
            sweep,
            labels=labels,
            label_scenarios=args.label_scenario,
            overrides=base,
            config=config,
            runner=runner,
            progress=bars.sweeping,
            detector_only=args.detector,
        )
    if args.out is not None:
        _write_csv(args.out, result)
    console = Console(highlight=False)
    if not args.quiet:
        _print_points(console, result)
    if args.budget is not None:
        suggestions = suggest(result, args.budget, pack, base)
        if not args.quiet:
            _print_suggestions(console, suggestions, args.budget)
        if args.overrides_out is not None:
            data = suggested_overrides(suggestions, args.rule, pack, base)
            header = (
                f"Suggested by rayworker backtest: rule {args.rule}, budget {args.budget:g} "
                f"alerts per tenant per day,\nsweep {' '.join(args.sweep)}, over "
                f"{result.stats.accepted:,} events ({result.days * 24:.1f} h of event time)."
            )
            write_overrides(args.overrides_out, data, header)
            if not args.quiet:
                changed = sum(s.changes for s in suggestions)
                console.print(f"wrote {args.overrides_out} ({changed} tenant overrides)")
    return 0


@contextmanager
def _events_path(args: argparse.Namespace) -> Iterator[Path]:
    if not args.sample:
        yield Path(args.events)
        return
    sample = resources.files("rayworker").joinpath(_SAMPLE)
    if not sample.is_file():
        msg = f"the bundled sample rayworker/{_SAMPLE} is missing; reinstall rayworker"
        raise InputError(msg)
    with resources.as_file(sample) as path:
        yield path


def _write_csv(path: Path, result: BacktestResult) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="") as out:
            result.write_csv(out)
    except OSError as exc:
        msg = f"cannot write --out file {str(path)!r}: {exc.strerror or exc}"
        raise RayworkerError(msg) from exc


class _Bars:
    """Transient progress bars on standard error: bytes read, then points swept."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self._enabled = enabled and console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        )
        self._sweep: TaskID | None = None

    def __enter__(self) -> _Bars:
        if self._enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._enabled:
            self._progress.stop()

    def reading(self, path: Path, batch_size: int) -> Batches:
        """A re-readable source that advances a bar per batch (in MiB)."""

        def batches() -> Iterator[Sequence[bytes]]:
            with JsonlReader(path, batch_size=batch_size) as reader:
                task = None
                if self._enabled:
                    total = (reader.size or 0) // (1 << 20) or None
                    task = self._progress.add_task(f"reading {reader.name} (MiB)", total=total)
                for lines in reader:
                    yield lines
                    if task is not None:
                        self._progress.update(task, completed=reader.bytes_read // (1 << 20))
                if task is not None:
                    self._progress.remove_task(task)

        return batches

    def sweeping(self, done: int, total: int) -> None:
        """Show the points evaluated so far."""
        if not self._enabled:
            return
        if self._sweep is None:
            self._sweep = self._progress.add_task("sweeping points", total=total)
        self._progress.update(self._sweep, completed=done, total=total)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_points(console: Console, result: BacktestResult) -> None:
    stats = result.stats
    paths = sorted({p.path for p in result.points})
    how = " and ".join(paths) if paths else "no points"
    console.print(
        f"backtest of rule {result.rule_id} ({result.kind}, {how}): "
        f"{stats.events_read:,} events read, "
        f"{stats.accepted:,} accepted, {stats.rejected:,} rejected, {stats.late:,} late; "
        f"{len(result.tenants):,} tenants over {result.days * 24:.2f} h of event time"
    )
    table = Table()
    for name in ("threshold", "window", "alerts", "tenants", "alerts/tenant/day", "max/day"):
        table.add_column(name, justify="right")
    if result.labels is not None:
        table.add_column("recall", justify="right")
        table.add_column("precision", justify="right")
    if len(paths) > 1:
        table.add_column("path")
    for p in result.points:
        row = [
            "rule's" if p.point.threshold is None else str(p.point.threshold),
            "rule's" if p.point.window_s is None else format_duration(p.point.window_s),
            f"{p.alerts:,}",
            f"{p.tenants_alerting:,}",
            f"{p.alerts_per_tenant_day:,.2f}",
            f"{p.max_tenant_alerts_per_day:,.1f}",
        ]
        if result.labels is not None:
            row += [_fraction(p.recall), _fraction(p.precision)]
        if len(paths) > 1:
            row.append(p.path)
        table.add_row(*row)
    console.print(table)
    if result.labels is not None:
        console.print(f"{result.labels} labelled attacks count for {result.rule_id}")


def _print_suggestions(console: Console, suggestions: list[Suggestion], budget: float) -> None:
    changing = [s for s in suggestions if s.changes]
    over = [s for s in suggestions if not s.within_budget]
    console.print(
        f"budget {budget:g} alerts per tenant per day: {len(changing)} of {len(suggestions)} "
        f"tenants would change; {len(over)} cannot meet it within the sweep"
    )
    if not changing:
        return
    table = Table()
    for name in ("tenant", "now", "suggested", "alerts/day", "within budget"):
        table.add_column(name)
    for s in changing:
        table.add_row(
            s.tenant,
            _setting(s.current.threshold, s.current.window_s),
            _setting(s.point.threshold, s.point.window_s),
            f"{s.alerts_per_day:,.1f}",
            "yes" if s.within_budget else "no",
        )
    console.print(table)


def _setting(threshold: int | None, window_s: float | None) -> str:
    parts = [
        "threshold " + ("(condition)" if threshold is None else str(threshold)),
        "window " + ("?" if window_s is None else format_duration(window_s)),
    ]
    return ", ".join(parts)
