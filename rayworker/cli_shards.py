"""``rayworker shards plan``: a load-aware key-group plan from the user's own history."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path

from rayworker.errors import ConfigError
from rayworker.settings import load_settings
from rayworker.shard_plan import plan_shards, write_assignment
from rayworker.sources.jsonl import iter_line_batches

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``shards plan`` to the ``rayworker`` command."""
    shards = commands.add_parser("shards", help="plan how key groups spread over shards")
    sub = shards.add_subparsers(dest="shards_command", required=True, metavar="COMMAND")
    plan = sub.add_parser(
        "plan",
        help="route sample events and write a load-aware assignment for assignment_path",
        description=(
            "Routes EVENTS (JSONL history) with the configured rules and overrides, measures "
            "each key group's load and moves as few key groups as needed so no shard carries "
            "more than TOLERANCE x the mean. Start the pipeline with "
            "RAYWORKER_ASSIGNMENT_PATH=FILE to use it. Plan before the first start: moving "
            "key groups of a running pipeline moves their state."
        ),
    )
    plan.add_argument("events", nargs="+", type=Path, metavar="EVENTS", help="JSONL files")
    plan.add_argument("--out", type=Path, required=True, help="assignment JSON to write")
    plan.add_argument("--config", type=Path, help="TOML or YAML settings file")
    plan.add_argument("--shards", type=int, help="shards to plan for (default: settings)")
    plan.add_argument("--key-groups", type=int, help="key groups (default: settings)")
    plan.add_argument("--tolerance", type=float, default=1.05, help="target max/mean load")
    plan.add_argument("--limit", type=int, default=None, help="use at most this many events")
    plan.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> int:
    # Imported here: the pipeline package imports Ray, which `rayworker --help` need not pay.
    from rayworker.pipeline.app import detector_config, load_pack  # noqa: PLC0415

    overrides = {
        k: v for k, v in (("shards", args.shards), ("key_groups", args.key_groups)) if v is not None
    }
    settings = load_settings(args.config, **overrides)
    if args.tolerance < 1.0:
        msg = f"--tolerance: got {args.tolerance}; use a max/mean ratio >= 1.0, e.g. 1.05"
        raise ConfigError(msg)
    pack, rule_overrides = load_pack(settings)
    plan = plan_shards(
        _limited(args.events, args.limit),
        pack,
        shards=settings.shards,
        groups=settings.key_groups,
        overrides=rule_overrides,
        config=detector_config(settings),
        tolerance=args.tolerance,
    )
    write_assignment(plan, args.out)
    print(
        f"{int(plan.load.sum()):,} routed event copies over {settings.key_groups} key groups, "
        f"{settings.shards} shards: max/mean load {plan.before:.3f} round-robin -> "
        f"{plan.after:.3f} planned ({plan.moved} key groups moved); wrote {args.out}"
    )
    return 0


def _limited(paths: list[Path], limit: int | None) -> Iterator[list[bytes]]:
    batches = itertools.chain.from_iterable(iter_line_batches(p) for p in paths)
    if limit is None:
        yield from batches
        return
    left = limit
    for batch in batches:
        if left <= 0:
            return
        yield batch[:left]
        left -= len(batch)
