"""CURVE keys of a multi-host topology: making them, loading them, and the allow list of the hosts' keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from dsat import keys, topology
from dsat.counters import Rejections
from dsat.errors import DsatError, KeyFileError
from dsat.topology import Topology
from tests.harness import MULTI, REGISTRY


def multi(tmp_path: Path, extra: str = "") -> Topology:
    return topology.loads(
        MULTI.replace("port_base = 7400", "port_base = 7400" + extra), path=tmp_path / "t.toml", registry=REGISTRY
    )


def test_create_makes_one_pair_per_host_with_the_secret_readable_by_its_owner_only(tmp_path: Path) -> None:
    """dsat keys writes public/HOST.key and private/HOST.key_secret (0600, in a 0700 folder) for every host."""
    topo = multi(tmp_path)
    assert keys.create(topo) == ["hub", "web01", "web02"]
    for host in topo.hosts:
        public, secret = keys.load_secret(keys.secret_path(topo.keys_dir, host))
        assert keys.load_public(keys.public_path(topo.keys_dir, host)) == public
        assert len(z85.decode(secret)) == 32
        assert stat.S_IMODE(keys.secret_path(topo.keys_dir, host).stat().st_mode) == 0o600
    assert stat.S_IMODE((topo.keys_dir / "private").stat().st_mode) == 0o700
    assert sorted(p.name for p in (topo.keys_dir / "public").iterdir()) == ["hub.key", "web01.key", "web02.key"]


def test_create_keeps_existing_pairs_and_replaces_only_those_asked(tmp_path: Path) -> None:
    """A second run makes nothing new; --replace web01 gives web01 a new pair and leaves the others."""
    topo = multi(tmp_path)
    keys.create(topo)
    before = {h: keys.load_public(keys.public_path(topo.keys_dir, h)) for h in topo.hosts}
    assert keys.create(topo) == []
    assert keys.create(topo, replace=["web01"]) == ["web01"]
    after = {h: keys.load_public(keys.public_path(topo.keys_dir, h)) for h in topo.hosts}
    assert after["web01"] != before["web01"] and after["hub"] == before["hub"] and after["web02"] == before["web02"]
    with pytest.raises(DsatError, match="no host 'web9' in \\[hosts\\]"):
        keys.create(topo, replace=["web9"])


def test_a_secret_key_others_can_read_is_refused(tmp_path: Path) -> None:
    """A group- or world-readable secret key is an error that says how to fix it."""
    topo = multi(tmp_path)
    keys.create(topo)
    secret = keys.secret_path(topo.keys_dir, "hub")
    secret.chmod(0o644)
    with pytest.raises(KeyFileError, match="others can read this secret key .*chmod 600 it"):
        keys.load_secret(secret)
    with pytest.raises(KeyFileError, match="holds no secret key"):
        keys.load_secret(keys.public_path(topo.keys_dir, "hub"))


def test_problems_for_names_each_missing_key_file(tmp_path: Path) -> None:
    """What a host lacks to join: its secret key and every host's public key; nothing when insecure."""
    topo = multi(tmp_path)
    keys.create(topo)
    keys.secret_path(topo.keys_dir, "web01").unlink()
    keys.public_path(topo.keys_dir, "web02").unlink()
    found = keys.problems_for(topo, "web01")
    assert len(found) == 2
    assert "web01.key_secret: cannot read the secret key" in found[0] and "dsat keys t.toml" in found[0]
    assert "web02.key: cannot read the public key" in found[1] and "copy keys/public/" in found[1]
    assert keys.problems_for(topo, "hub") == [found[1]]
    assert keys.problems_for(multi(tmp_path, "\ninsecure = true"), "web01") == []


def test_curve_for_gives_the_server_key_of_the_binding_host(tmp_path: Path) -> None:
    """A connecting socket gets the binding host's public key as server key; ipc and insecure links get none."""
    topo = multi(tmp_path)
    keys.create(topo)
    ring = keys.KeyRing(topo, "web01")
    client = ring.curve_for("tcp://[fd00::12]:7410", bind=False)
    assert client == keys.Curve(ring.public, ring.secret, server=ring.hosts["web02"])
    assert keys.KeyRing(topo, "web02").curve_for("tcp://[fd00::12]:7410", bind=True) == keys.Curve(
        ring.hosts["web02"], keys.load_secret(keys.secret_path(topo.keys_dir, "web02"))[1]
    )
    assert ring.curve_for(topo.tracker.status, bind=False) is None
    insecure = multi(tmp_path, "\ninsecure = true")
    assert keys.KeyRing(insecure, "web01").curve_for("tcp://10.0.0.1:7402", bind=False) is None


def test_allow_list_admits_the_topologys_hosts_and_refuses_others_by_reason(tmp_path: Path) -> None:
    """A host's key is admitted as that host; a stranger's key is unknown_key; no CURVE is no_curve."""
    topo = multi(tmp_path)
    keys.create(topo)
    allow = keys.KeyRing(topo, "hub").allow_list()
    web02 = keys.load_public(keys.public_path(topo.keys_dir, "web02"))
    stranger, _ = zmq.curve_keypair()
    assert allow.check(b"CURVE", web02) == ("web02", None)
    assert allow.check(b"CURVE", stranger) == (None, "unknown_key")
    assert allow.check(b"NULL", None) == (None, "no_curve")


def test_allow_list_picks_up_a_new_key_when_its_file_changes(tmp_path: Path) -> None:
    """After web01's key is replaced on disk, its new key is admitted and the old one refused, with no restart."""
    topo = multi(tmp_path)
    keys.create(topo)
    allow = keys.AllowList(topo.keys_dir, list(topo.hosts))
    old = keys.load_public(keys.public_path(topo.keys_dir, "web01"))
    keys.create(topo, replace=["web01"])
    path = keys.public_path(topo.keys_dir, "web01")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))  # a later mtime, surely
    new = keys.load_public(path)
    assert allow.check(b"CURVE", new) == ("web01", None)
    assert allow.check(b"CURVE", old) == (None, "unknown_key")


def test_zap_reply_admits_a_known_key_and_counts_a_refusal_with_the_peer_address(tmp_path: Path) -> None:
    """The ZAP answer is 200 with the host as user id for a known key; 400 with the reason, counted, otherwise."""
    topo = multi(tmp_path)
    keys.create(topo)
    allow = keys.KeyRing(topo, "hub").allow_list()
    rejections = Rejections("orchester")
    web01 = z85.decode(keys.load_public(keys.public_path(topo.keys_dir, "web01")))
    stranger = z85.decode(zmq.curve_keypair()[0])
    request = [b"1.0", b"7", b"dsat", b"10.0.0.66", b"", b"CURVE"]
    assert keys.zap_reply(allow, [*request, web01], rejections) == [b"1.0", b"7", b"200", b"OK", b"web01", b""]
    assert rejections == {}
    assert keys.zap_reply(allow, [*request, stranger], rejections) == [b"1.0", b"7", b"400", b"unknown_key", b"", b""]
    assert keys.zap_reply(allow, [b"1.0", b"8", b"dsat", b"10.0.0.67", b"", b"NULL"], rejections)[2] == b"400"
    assert keys.zap_reply(allow, [b"2.0"], rejections)[2] == b"400"
    assert rejections == {"unknown_key": 1, "no_curve": 1, "bad_zap_request": 1}


def test_a_libzmq_without_curve_refuses_a_multi_host_topology(tmp_path: Path) -> None:
    """Without CURVE in libzmq, a multi-host topology does not start; an insecure one or a one-host one does."""
    topo = multi(tmp_path)
    with pytest.raises(DsatError, match="has no CURVE, which every link between hosts needs"):
        keys.require_curve(topo, has=lambda feature: False)
    keys.require_curve(multi(tmp_path, "\ninsecure = true"), has=lambda feature: False)
    keys.require_curve(topo, has=lambda feature: True)
