"""The values a stream repeats, learned so that decoding hands out one shared string for each.

A fleet's events repeat a few values over and over: a hundred tenants, a dozen actions, a
handful of outcome texts. Decoded as plain strings, each event gets fresh copies, and every
later step that groups or filters by them hashes and compares those copies again. Decoded as
a ``Literal`` of the values already seen, msgspec hands out the one string object it holds for
each value (hash cached, equal by identity), and allocates less.

:class:`KnownValues` learns those values from what the plain decoder accepted, and builds the
struct type that decodes them as literals. A line with a value not yet known fails that type
and is decoded plainly instead, so what the decoder returns is always exactly what the plain
decoder returns: the literals are a subset of the values the plain types accept. A field that
shows more than ``limit`` distinct values is not a repeating one: it is dropped for good and
stays a plain string.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec

__all__ = ["INTERNED_FIELDS", "KnownValues"]

# Struct attribute -> whether the field is required. Ids, principals and addresses are left
# out on purpose: they have as many values as there are users, which is no cache.
INTERNED_FIELDS: dict[str, bool] = {
    "organization_id": True,
    "action": True,
    "target_resource_type": False,
    "outcome_description": False,
    "data_classification": False,
}
DEFAULT_LIMIT = 1024


class KnownValues:
    """The learned values of the repeating fields, and the struct type that interns them."""

    __slots__ = ("_base", "_dropped", "_limit", "_values", "struct")

    def __init__(self, base: type[msgspec.Struct], *, limit: int = DEFAULT_LIMIT) -> None:
        self._base = base
        self._limit = limit
        self._values: dict[str, set[str]] = {name: set() for name in INTERNED_FIELDS}
        self._dropped: set[str] = set()
        self.struct: type[msgspec.Struct] | None = None
        """The struct type decoding the known values as literals (None until some are known)."""

    def known(self, name: str) -> frozenset[str]:
        """The values of a field decoded as literals (empty once the field is dropped)."""
        return frozenset(self._values.get(name, ()))

    def learn(self, events: Iterable[Any]) -> bool:
        """Learn the values of decoded events; True when the struct type was rebuilt."""
        if len(self._dropped) == len(self._values):
            return False
        grown = False
        rows = list(events)
        for name, values in self._values.items():
            if name in self._dropped:
                continue
            seen = {getattr(event, name) for event in rows}
            seen.discard(None)
            if seen <= values:
                continue
            if len(values | seen) > self._limit:
                self._dropped.add(name)
                values.clear()
            else:
                values.update(seen)
            grown = True
        if grown:
            self.struct = self._build()
        return grown

    def _build(self) -> type[msgspec.Struct] | None:
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for name, required in INTERNED_FIELDS.items():
            values = self._values[name]
            if name in self._dropped or not values:
                continue
            literal: Any = Literal[tuple(sorted(values))]
            fields.append((name, literal) if required else (name, literal | None, None))
        if not fields:
            return None
        return msgspec.defstruct(
            f"{self._base.__name__}Known", fields, bases=(self._base,), rename="camel", gc=False
        )
