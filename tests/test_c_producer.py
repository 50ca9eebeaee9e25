"""Envelopes from C: examples/c/producer.c, built with the distribution's libzmq and msgpack-c, feeds a running
topology, and its datapoint lands in Whisper exactly, its batch tracked to a happy end."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import whisper
import zmq

from dsat.envelope import Envelope, decode
from dsat.tools.stack import free_port
from dsat.topology import load
from tests.harness import ROOT, Carbon, Processes, apt_install, status, topology, wait_for

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "c"
#: What the build needs and the Debian package that brings it: programs, then pkg-config modules.
PROGRAMS = {"cc": "gcc", "make": "make", "pkg-config": "pkg-config"}
MODULES = {"libzmq": "libzmq3-dev", "msgpack-c msgpack": "libmsgpack-c-dev|libmsgpack-dev"}


def _has_module(names: str) -> bool:
    """pkg-config knows one of *names* (msgpack-c 6 renamed its module)."""
    return any(subprocess.run(["pkg-config", "--exists", name], timeout=30).returncode == 0 for name in names.split())


@pytest.fixture(scope="module")
def producer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The producer built by its Makefile, warnings as errors, with AddressSanitizer and LeakSanitizer (a leak
    or a bad access writes a report on its standard error); what the build lacks installed first."""
    missing = [pkg for prog, pkg in PROGRAMS.items() if shutil.which(prog) is None]
    if shutil.which("pkg-config") is not None:
        missing += [pkg for names, pkg in MODULES.items() if not _has_module(names)]
    else:
        missing += list(MODULES.values())
    if missing and shutil.which("apt-get") is None:
        pytest.skip(
            f"NOT TESTED: the C producer cannot be built here: {', '.join(missing)} missing and no apt-get to"
            " install them; install a C compiler, make, pkg-config, libzmq and msgpack-c to run this test"
        )
    apt_install(missing)
    flags = "-O1 -g -Werror -fsanitize=address,undefined -fno-omit-frame-pointer"
    out = tmp_path_factory.mktemp("producer")
    make = ["make", "-C", str(out), "-f", str(EXAMPLE / "Makefile"), f"CFLAGS={flags}", f"LDFLAGS={flags}"]
    done = subprocess.run(make, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "producer"


def stored(carbon: Carbon, path: str) -> dict[int, float]:
    """Timestamp -> value of every datapoint in the Whisper file of *path* (none before it exists)."""
    wsp = carbon.stack.whisper_dir / (path.replace(".", "/") + ".wsp")
    if not wsp.exists():
        return {}
    try:
        (start, end, step), values = whisper.fetch(str(wsp), 0)
    except whisper.CorruptWhisperFile:  # being created by carbon-cache right now
        return {}
    return {t: v for t, v in zip(range(start, end, step), values, strict=True) if v is not None}


def test_a_c_program_sends_a_tracked_datapoint_that_lands_exactly_in_whisper(
    short_tmp: Path, carbon: Carbon, processes: Processes, producer: Path
) -> None:
    """producer.c's envelope goes through the orchester's input link to carbon-cache: the Whisper file holds its
    value at its timestamp, and the tracker counts its batch (the producer's SEND, the orchester's ACK and
    HAPPY_END) as the one happy end, with no bad event."""
    carbon.start()
    # a topology needs a source of its own: an ingress listener, which nothing here writes to
    topo_file = topology(short_tmp, carbon, f'[ingress]\nplaintext = "127.0.0.1:{free_port()}"')
    up = processes.dsat("up", str(topo_file), name="up")
    topo = load(topo_file)
    for address in (topo.orchester.listen.address, topo.tracker.events):
        wait_for(lambda a=address: Path(a.removeprefix("ipc://")).exists(), 30, f"{address} to be bound")
    path, value, timestamp = "dsat.testhost.cprobe.temperature", -273.15, int(time.time()) - 60  # 1 s Whisper archive

    sent = subprocess.run(
        [str(producer), topo.orchester.listen.address, path, repr(value), str(timestamp), topo.tracker.events],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert sent.returncode == 0, sent.stderr
    assert sent.stderr == ""  # nothing from the sanitizers either
    wait_for(lambda: stored(carbon, path), 30, f"{path} in Whisper", detail=lambda: processes.log_of(up)[-3000:])
    assert stored(carbon, path) == {timestamp: value}
    snap = wait_for(lambda: (s := status(topo_file)) and s["tasks"]["happy_end"] and s, 20, "the happy end")
    assert isinstance(snap, dict)
    tasks = snap["tasks"]
    assert (tasks["happy_end"], tasks["in_flight"], tasks["error"], tasks["bad_events"]) == (1, 0, 0, 0), tasks
    assert snap["steps"]["cprobe"]["batches_sent"] == 1 and snap["steps"]["orchester"]["batches_ended"] == 1


def test_the_producer_frames_are_the_batch_and_the_emitters_send_event(producer: Path, short_tmp: Path) -> None:
    """What the producer sends decodes with dsat.envelope to exactly the tracked batch a satellite would send
    (a version-4 UUID as task_id, its host and pid, next = orchester), and to its SEND event: one leg to the
    orchester, one point, the same ids."""
    context = zmq.Context()
    orchester, tracker = context.socket(zmq.PULL), context.socket(zmq.PULL)
    try:
        for sock, name in ((orchester, "orchester"), (tracker, "events")):
            sock.bind(f"ipc://{short_tmp}/{name}")
            sock.setsockopt(zmq.RCVTIMEO, 10_000)
        args = [f"ipc://{short_tmp}/orchester", "cprobe.t;room=lab", "0.1", "1700000000", f"ipc://{short_tmp}/events"]
        done = subprocess.run([str(producer), *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        batch, event = decode(orchester.recv()), decode(tracker.recv())
    finally:
        orchester.close(linger=0)
        tracker.close(linger=0)
        context.term()
    assert uuid.UUID(batch.task_id).version == 4 and batch.task_id == uuid.UUID(batch.task_id).hex
    assert isinstance(batch.pid, int) and batch.pid > 0
    ids = {"type": "gauge", "emitter": "cprobe", "task_id": batch.task_id, "seq": 1, "where": socket.gethostname()}
    assert batch == Envelope(
        **ids, step="cprobe", pid=batch.pid, next=("orchester",), points=(("cprobe.t;room=lab", 1700000000, 0.1),)
    )
    assert event == Envelope(
        **ids,
        step="cprobe",
        pid=batch.pid,
        channel="event",
        event="SEND",
        meta={"legs": 1, "to": "orchester", "points": 1},
    )


def test_the_producer_gives_up_saying_where_when_nothing_listens(producer: Path, short_tmp: Path) -> None:
    """With no orchester at its address the producer gives up after its 5 s send timeout (no hang), exits 1 and
    says where, without a leak."""
    address = f"ipc://{short_tmp}/nobody"
    args = [str(producer), address, "a.b", "1", "1700000000"]
    sent = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert sent.returncode == 1
    assert sent.stderr == f"producer: nothing listens at {address} (Resource temporarily unavailable after 5000 ms)\n"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["ipc:///x", "a.b", "1"], "usage: "),
        (["ipc:///x", "a.b", "12abc", "1700000000"], "VALUE 12abc is not a finite number"),
        (["ipc:///x", "a.b", "nan", "1700000000"], "VALUE nan is not a finite number"),
        (["ipc:///x", "a.b", "1", "1700000000.5"], "TIMESTAMP 1700000000.5 is not whole seconds since the epoch"),
    ],
)
def test_the_producer_refuses_bad_arguments_before_sending(producer: Path, args: list[str], said: str) -> None:
    """A wrong argument count, a value that is not a finite number or a timestamp that is not whole seconds: exit
    status 2 and the reason, before any socket is made."""
    done = subprocess.run([str(producer), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert said in done.stderr
