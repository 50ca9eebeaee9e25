"""`dsat test-rules`: rewritten names, aggregates and destinations for names read on stdin."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from dsat.errors import ConfigError
from dsat.tools import explain

REWRITE = "[pre]\n^servers\\.(\\w+)\\.cpu\\. = servers.\\1.processor.\n"
AGGREGATION = "servers.all.processor.<metric> (60) = avg servers.*.processor.<metric>\n"


def test_prints_rewrite_aggregate_and_destination(tmp_path: Path) -> None:
    """Each input line is explained: its rewritten name, the aggregate it feeds, where it is sent."""
    (tmp_path / "rw.conf").write_text(REWRITE)
    (tmp_path / "agg.conf").write_text(AGGREGATION)
    (tmp_path / "t.toml").write_text(
        '[ingress]\nplaintext = "127.0.0.1:2003"\n[rules]\nrewrite = "rw.conf"\naggregation = "agg.conf"\n'
        'deny = ["^secret\\\\."]\n[carbon]\ndestinations = ["127.0.0.1:2004:a", "127.0.0.1:2104:b"]\n'
    )
    out = io.StringIO()
    stdin = io.StringIO("servers.web1.cpu.user 1 1700000000\nsecret.thing 1 1\n\nplain.metric\n")
    assert explain.run([], stdin, out, str(tmp_path / "t.toml")) == 0
    text = out.getvalue()
    assert "rewritten to   servers.web1.processor.user" in text
    assert "aggregated to  servers.all.processor.user" in text
    assert "destination    127.0.0.1:2" in text
    assert "dropped by" in text.split("secret.thing")[1]
    assert "plain.metric\n    sent as        plain.metric" in text


def test_rule_files_are_told_apart_by_content(tmp_path: Path) -> None:
    """A file with [pre]/[post] is a rewrite file, one with `(freq) =` lines an aggregation file."""
    (tmp_path / "a").write_text(REWRITE)
    (tmp_path / "b").write_text(AGGREGATION)
    (tmp_path / "c").write_text("nothing here\n")
    assert explain.rule_kind(tmp_path / "a") == "rewrite"
    assert explain.rule_kind(tmp_path / "b") == "aggregation"
    with pytest.raises(ConfigError, match="neither"):
        explain.rule_kind(tmp_path / "c")
    out = io.StringIO()
    explain.run([tmp_path / "b", tmp_path / "a"], io.StringIO("servers.x.cpu.idle 1 1\n"), out)
    assert "servers.x.processor.idle" in out.getvalue()


def test_tagged_names_show_their_canonical_form_tags_and_refusals(tmp_path: Path) -> None:
    """A tagged name is shown canonical, the rules apply to that, its tags are listed; a bad tag is refused."""
    (tmp_path / "rw.conf").write_text("[pre]\n;dc.eu-west = ;dc=eu\n")  # a regex cannot hold "=": "." stands in
    out = io.StringIO()
    stdin = io.StringIO("disk.used;server=web01;dc=eu-west 1 1\ndisk.used;dc=~eu 1 1\n")
    explain.run([tmp_path / "rw.conf"], stdin, out)
    first, second = out.getvalue().split("\ndisk.used;dc=~eu\n")
    assert "    canonical      disk.used;dc=eu-west;server=web01\n" in first
    assert "    rewritten to   disk.used;dc=eu;server=web01\n" in first
    assert "    sent as        disk.used;dc=eu;server=web01\n    tags           dc=eu server=web01" in first
    assert second.startswith("    refused        (bad_tag) ")


@pytest.mark.parametrize(
    ("hashing", "shown"),
    [
        ("carbon_ch", "(carbon_ch position 332, "),  # the md5 of plain.metric begins 0x014c
        ("fnv1a_ch", "(fnv1a_ch position "),
        ("jump_fnv1a_ch", "(jump_fnv1a_ch bucket "),
    ],
)
def test_shows_the_placement_of_each_hashing(tmp_path: Path, hashing: str, shown: str) -> None:
    """With --topology, the destinations come with the method, the ring position (or jump bucket) and replication."""
    from dsat.placement import make_placement

    (tmp_path / "t.toml").write_text(
        f'[ingress]\nplaintext = "127.0.0.1:2003"\n[carbon]\nhashing = "{hashing}"\nreplication = 2\n'
        'destinations = ["127.0.0.1:2004=a", "127.0.0.1:2104=b", "10.0.0.2:2004"]\n'
    )
    out = io.StringIO()
    assert explain.run([], io.StringIO("plain.metric\n"), out, str(tmp_path / "t.toml")) == 0
    line = next(line for line in out.getvalue().splitlines() if "destination" in line)
    placement = make_placement(
        hashing, [(("127.0.0.1", 2004, "a"), 0), (("127.0.0.1", 2104, "b"), 1), (("10.0.0.2", 2004, None), 2)], 2
    )
    names = ["127.0.0.1:2004=a", "127.0.0.1:2104=b", "10.0.0.2:2004"]  # as carbon-c-relay writes them
    expected = ", ".join(names[i] for i in placement.place("plain.metric"))
    assert line == f"    destination    {expected}  ({placement.where('plain.metric')}, replication 2)"
    assert shown in line
