"""docker/podman-up.py's start order, read from a compose file's depends_on."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest
import yaml

from tests.harness import ROOT


def podman_up() -> ModuleType:
    spec = importlib.util.spec_from_file_location("podman_up", ROOT / "docker" / "podman-up.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stacks_stages_follow_its_depends_on() -> None:
    """docker/compose.yaml starts caches and tracker, then orchester and graphite-web, then rate, then collectors."""
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert podman_up().stages(compose) == [
        ["carbon-a", "carbon-b", "tracker"],
        ["graphite-web", "orchester"],
        ["rate"],
        ["cpu", "disk", "disk_usage", "load", "memory", "network"],
    ]


def test_every_service_starts_after_all_it_depends_on() -> None:
    """Both depends_on forms (list, mapping with conditions) order a service after each of its dependencies."""
    compose = {
        "services": {
            "c": {"depends_on": {"b": {"condition": "service_healthy"}, "a": {"condition": "service_started"}}},
            "b": {"depends_on": ["a"]},
            "a": {},
            "d": {},
        }
    }
    assert podman_up().stages(compose) == [["a", "d"], ["b"], ["c"]]


@pytest.mark.parametrize(
    ("services", "reason"),
    [
        ({"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}}, "cycle"),
        ({"a": {"depends_on": ["ghost"]}}, "do not exist"),
    ],
)
def test_an_impossible_order_is_refused_with_its_reason(services: dict, reason: str) -> None:
    """A cycle or a dependency on a service that is not there is a StartError naming it, not a hang."""
    module = podman_up()
    with pytest.raises(module.StartError, match=reason):
        module.stages({"services": services})
