"""The satellite registry: explicit, read-only, keyed by name, one spec per name."""

from __future__ import annotations

import pytest

from dsat.plugins import KINDS, Registry, SatelliteSpec


def spec(name: str, kind: str = "collector") -> SatelliteSpec:
    return SatelliteSpec(name=name, kind=kind, factory=lambda options: lambda: [])


def test_a_registry_maps_each_name_to_its_spec() -> None:
    """Lookup by name, iteration in registration order, length, membership."""
    cpu, rate = spec("cpu"), spec("rate", "transform")
    registry = Registry([cpu, rate])
    assert registry["cpu"] is cpu and registry["rate"] is rate
    assert list(registry) == ["cpu", "rate"] and len(registry) == 2
    assert "cpu" in registry and "nope" not in registry
    with pytest.raises(KeyError):
        registry["nope"]


def test_a_name_registered_twice_is_refused() -> None:
    """Two specs under one name would make `use = ...` ambiguous: ValueError naming it."""
    with pytest.raises(ValueError, match="'cpu' registered twice"):
        Registry([spec("cpu"), spec("cpu", "sink")])


def test_a_spec_of_an_unknown_kind_is_refused() -> None:
    """Only collector, transform and sink exist; anything else fails at construction, listing them."""
    with pytest.raises(ValueError, match="kind must be one of"):
        spec("x", "source")
    assert KINDS == ("collector", "transform", "sink")


def test_the_registry_is_read_only() -> None:
    """A Registry is a Mapping with no way to add or replace a spec after it is built."""
    registry = Registry([spec("cpu")])
    with pytest.raises(TypeError):
        registry["other"] = spec("other")  # type: ignore[index]
    assert not hasattr(registry, "register")


def test_the_built_in_satellites_are_one_registry() -> None:
    """`satellites.REGISTRY` holds the built-ins, each a spec under its own name."""
    from dsat.satellites import REGISTRY

    assert isinstance(REGISTRY, Registry) and len(REGISTRY) > 5
    assert all(REGISTRY[name].name == name for name in REGISTRY)
    assert {"cpu", "memory", "capture"} <= set(REGISTRY)
