"""The explicit registry of satellite implementations, keyed by name.

A topology's ``use = "cpu"`` is looked up here and nowhere else: no name that
arrives from a file or the wire is ever imported.  The built-in satellites
register themselves in :mod:`dsat.satellites`; a program embedding DSAT can build
its own :class:`Registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The kinds of satellite.  A collector produces datapoints every ``every``
#: seconds; a transform turns one batch into zero, one or several batches;
#: a sink consumes batches and sends nothing on.
KINDS = ("collector", "transform", "sink")


@dataclass(frozen=True)
class SatelliteSpec:
    """How to build one kind of satellite.

    ``factory(options)`` returns the callable the runtime drives:

    * collector: ``collect() -> iterable of (metric, value)`` or
      ``(metric, value, timestamp)``; the runtime adds the timestamp when
      missing and builds the full path ``<prefix>.<where>.<step>.<metric>``.
    * transform: ``transform(batch) -> None | batch | dsat.envelope.Batches``;
      ``None`` or an empty batch drops it.
    * sink: ``consume(batch) -> None``.

    ``type`` is the envelope type a collector's batches carry (``counter``,
    ``gauge``...); ``None`` for a transform means "keep the input's type".
    """

    name: str
    kind: str
    factory: Callable[[Mapping[str, Any]], Callable[..., Any]]
    type: str | None = None
    doc: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"satellite {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}")


class Registry(Mapping[str, SatelliteSpec]):
    """A read-only mapping of satellite name to :class:`SatelliteSpec`."""

    def __init__(self, specs: list[SatelliteSpec] | tuple[SatelliteSpec, ...] = ()) -> None:
        self._specs: dict[str, SatelliteSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"satellite {spec.name!r} registered twice")
            self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> SatelliteSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)
