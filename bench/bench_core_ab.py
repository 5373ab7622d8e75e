"""A/B of the core: this checkout's detector against a git revision's, in one process.

    python bench/bench_core_ab.py REV [--events 1000000] [--batch 10000]

The machines these run on drift by a third within minutes, so two separate runs of
``bench_core.py`` cannot tell a 5 % change from noise. Here both detectors run in the same
process over the same batches, alternating which goes first, so drift hits both alike. The
revision's ``rayworker`` package is exported with ``git archive`` into a temporary directory
and renamed ``rw_base`` (its own imports rewritten), so the two versions load side by side.
It prints the seconds each spent in ``process_lines``, their ratio, and (a) decode-only
seconds measured between them, with each version's (b)/(a).
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import CLOCK, batches, load_events

from rayworker.detect import Detector
from rayworker.events import EventDecoder
from rayworker.rules import builtin_pack

ROOT = Path(__file__).resolve().parent.parent
_IMPORTS = re.compile(r"\b(from|import) rayworker\b")


def base_package(rev: str, into: Path) -> Any:
    """The ``rayworker`` package of git revision ``rev``, importable as ``rw_base``."""
    git = shutil.which("git") or "git"
    archive = subprocess.run(  # noqa: S603 - git with a revision the user named, no shell
        [git, "archive", "--format=tar", rev, "rayworker"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "rw_base"
    (into / "rayworker").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = _IMPORTS.sub(r"\1 rw_base", text).replace("rayworker.", "rw_base.")
        path.write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module("rw_base")


def main(argv: list[str] | None = None) -> int:
    """Run both detectors batch by batch and print their times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare against (e.g. HEAD~3)")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args(argv)
    lines = load_events(args.events, datetime(2026, 1, 5, 9, 30, tzinfo=UTC))
    parts = batches(lines, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        base_package(args.rev, Path(tmp))
        base_detect = importlib.import_module("rw_base.detect")
        base_rules = importlib.import_module("rw_base.rules")
        base = base_detect.Detector(base_rules.builtin_pack(), clock=CLOCK)
        head = Detector(builtin_pack(), clock=CLOCK)
        decoder = EventDecoder(builtin_pack().fields())
        spent = {"base": 0.0, "head": 0.0, "decode": 0.0}
        # Each alert's latest version, as JSON: both detectors must report exactly the same.
        alerts: dict[str, dict[str, Any]] = {"base": {}, "head": {}}
        for i, part in enumerate(parts):
            started = time.perf_counter()
            decoder.decode(part)
            spent["decode"] += time.perf_counter() - started
            turns = [("base", base), ("head", head)]
            for name, detector in turns if i % 2 == 0 else reversed(turns):
                started = time.perf_counter()
                result = detector.process_lines(part)
                spent[name] += time.perf_counter() - started
                alerts[name].update((a.id, a.to_json()) for a in result.alerts)
        for name, detector in (("base", base), ("head", head)):
            alerts[name].update((a.id, a.to_json()) for a in detector.flush().alerts)
    n = len(lines)
    same = alerts["base"] == alerts["head"]
    print(f"core A/B: {n:,} events, batches of {args.batch:,}, base {args.rev}")
    print(f"  base  {spent['base']:8.3f} s   (b)/(a) = {spent['decode'] / spent['base']:.3f}")
    print(f"  head  {spent['head']:8.3f} s   (b)/(a) = {spent['decode'] / spent['head']:.3f}")
    ratio = spent["head"] / spent["base"]
    print(f"  head / base = {ratio:.3f}   (a) decode {spent['decode']:.3f} s")
    verdict = "identical" if same else "DIFFERENT"
    print(f"  alerts: base {len(alerts['base']):,}, head {len(alerts['head']):,}, {verdict}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
