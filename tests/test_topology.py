"""The topology file: loading into frozen dataclasses, its validation stages, and the preflight on this machine."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import dsat
from dsat import breaker, fsm, topology
from dsat.errors import ConfigError
from dsat.tools.stack import free_port
from dsat.topology import CarbonConf, Link, OrchesterConf, Step, TrackerConf, preflight, schema, tables
from tests.harness import BASE, MULTI, PAIR, PATH, REGISTRY, load, only_problem, problems

# -- loading -------------------------------------------------------------------


def test_minimal_file_loads_with_every_default_expanded() -> None:
    """Keys left out take their documented defaults, with {run_dir} expanded to the absolute run_dir."""
    topo = load(BASE)
    run = "/tmp/dsat-topo/.dsat/run"
    assert topo.path == PATH
    assert (topo.prefix, topo.where, topo.run_dir, topo.codec) == (
        "dsat",
        socket.gethostname(),
        Path(run),
        "msgpack",
    )
    assert topo.tracker == TrackerConf(
        events=f"ipc://{run}/tracker-events",
        states=f"ipc://{run}/tracker-states",
        status=f"ipc://{run}/tracker-status",
        timeout=30.0,
        metrics_every=10.0,
    )
    assert topo.orchester == OrchesterConf(
        listen=Link(f"ipc://{run}/orchester", "pull"),
        control=f"ipc://{run}/orchester-control",
        routes={"*": ("carbon",)},
        max_queue=1_000_000,
    )
    assert topo.carbon == CarbonConf(destinations=(("127.0.0.1", 2004, None),), protocol="pickle", timeout=10.0)
    assert topo.satellites["cpu"] == Step(
        name="cpu",
        use="c",
        kind="collector",
        type="gauge",
        every=10.0,
        next=("rate",),
        options={},
        hosts=(),
        listen=None,
        codec="msgpack",
    )
    assert topo.satellites["rate"] == Step(
        name="rate",
        use="t",
        kind="transform",
        type=None,
        every=None,
        next=("orchester",),
        options={},
        hosts=(),
        listen=Link(f"ipc://{run}/sat-rate", "pull"),
        codec="msgpack",
    )


FULL = """
[dsat]
prefix = "metrics"
where = "web01"
run_dir = "run"
codec = "json"

[tracker]
events = "tcp://127.0.0.1:5501"
states = "tcp://127.0.0.1:5502"
status = "ipc://{run_dir}/status"
timeout = "1m"
metrics_every = 5

[orchester]
listen = "tcp://*:5500"
pattern = "sub"
control = "ipc://{run_dir}/control"
max_queue = 500
[orchester.routes]
"*" = ["carbon"]
"audit" = ["archive", "carbon"]

[carbon]
destinations = ["10.0.0.1:2004", "[::1]:2104"]
protocol = "plaintext"
timeout = "250ms"

[satellites.cpu]
use = "c"
every = 2.5
next = ["rate", "orchester"]
options = { percpu = true }
codec = "msgpack"

[satellites.rate]
use = "t"
listen = "ipc://{run_dir}/rate-in"
pattern = "pair"

[satellites.archive]
use = "s"
"""


def test_dsat_where_in_the_environment_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """DSAT_WHERE wins over [dsat] where and the host name, so one topology file serves many hosts."""
    monkeypatch.setenv("DSAT_WHERE", "web07")
    assert load(FULL).where == "web07"
    assert load(BASE).where == "web07"
    monkeypatch.setenv("DSAT_WHERE", "")
    assert load(FULL).where == "web01"


def test_full_example_loads_every_key() -> None:
    """Every key of the format lands in its dataclass field, converted (durations, addresses, hosts)."""
    topo = load(FULL)
    run = "/tmp/dsat-topo/run"
    assert (topo.prefix, topo.where, topo.run_dir, topo.codec) == ("metrics", "web01", Path(run), "json")
    assert topo.tracker == TrackerConf("tcp://127.0.0.1:5501", "tcp://127.0.0.1:5502", f"ipc://{run}/status", 60.0, 5.0)
    assert topo.orchester == OrchesterConf(
        Link("tcp://*:5500", "sub"),
        f"ipc://{run}/control",
        {"*": ("carbon",), "audit": ("archive", "carbon")},
        500,
    )
    assert topo.carbon == CarbonConf((("10.0.0.1", 2004, None), ("::1", 2104, None)), "plaintext", 0.25)
    cpu, rate, archive = (topo.satellites[n] for n in ("cpu", "rate", "archive"))
    assert (cpu.every, cpu.next, dict(cpu.options), cpu.hosts, cpu.codec) == (
        2.5,
        ("rate", "orchester"),
        {"percpu": True},
        (),
        "msgpack",
    )
    assert (rate.listen, rate.codec) == (Link(f"ipc://{run}/rate-in", "pair"), "json")
    assert (archive.kind, archive.next, archive.listen) == (
        "sink",
        (),
        Link(f"ipc://{run}/sat-archive", "pull"),
    )


def test_topology_is_frozen_and_options_read_only() -> None:
    """Nothing in a loaded topology can be changed in place."""
    topo = load(FULL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        topo.prefix = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        topo.satellites["cpu"].options["percpu"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        topo.orchester.routes["*"] = ()  # type: ignore[index]


def test_links_routes_and_inputs() -> None:
    """input_of finds a step's receiving link, routes_for falls back to "*", sender_pattern pairs patterns."""
    topo = load(FULL)
    assert topo.input_of("orchester") == Link("tcp://*:5500", "sub")
    assert topo.input_of("rate").sender_pattern == "pair"
    assert [Link("x", p).sender_pattern for p in ("pull", "sub", "pair", "rep")] == [
        "push",
        "pub",
        "pair",
        "req",
    ]
    with pytest.raises(KeyError):
        topo.input_of("cpu")
    assert topo.routes_for("audit") == ("archive", "carbon")
    assert topo.routes_for("gauge") == ("carbon",)
    no_default = load(BASE + '[orchester.routes]\n"audit" = ["carbon"]\n')
    assert no_default.routes_for("gauge") == ()


def test_load_reads_the_file_and_anchors_a_relative_run_dir_at_its_folder(tmp_path: Path) -> None:
    """load() reads from disk; a relative run_dir is relative to the TOML file, not the working directory."""
    path = tmp_path / "t.toml"
    path.write_text('[dsat]\nrun_dir = "r"\n' + BASE)
    topo = topology.load(path, REGISTRY)
    assert topo.run_dir == tmp_path / "r"
    assert topo.path == path


def test_load_of_a_missing_file_names_it(tmp_path: Path) -> None:
    """A topology that cannot be read is a ConfigError naming the path."""
    with pytest.raises(ConfigError, match="nope.toml: cannot read the topology"):
        topology.load(tmp_path / "nope.toml", REGISTRY)


def test_default_registry_is_the_built_in_satellites() -> None:
    """Without a registry, `use` names are looked up among the built-in satellites (the demo loads)."""
    demo = Path(dsat.__file__).with_name("demo.toml")
    topo = topology.load(demo)
    assert topo.satellites["cpu"].kind == "collector"


def test_the_documented_full_example_loads() -> None:
    """The full example in docs/topology.rst is a valid topology for the built-in satellites."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "topology.rst").read_text()
    block = doc.split(".. code-block:: toml\n", 1)[1].split("\nEvery key", 1)[0]
    text = "\n".join(line.removeprefix("   ") for line in block.splitlines())
    topo = topology.loads(text, path=PATH)
    assert sorted(topo.satellites) == ["archive", "cpu", "memory", "rate"]
    assert topo.routes_for("audit") == ("archive", "carbon")


# -- durations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 2 s ", 2.0),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_durations_parse_to_seconds(value: object, seconds: float) -> None:
    """Durations take ms/s/m/h suffixes or a bare positive number of seconds."""
    assert topology.parse_duration(value, where="k") == seconds


@pytest.mark.parametrize(
    "value",
    ["10", "10sec", "1d", "-1s", "0s", "", "s", 0, -2, 0.0, True, float("inf"), float("nan"), None, [1]],
)
def test_bad_durations_are_config_errors(value: object) -> None:
    """Anything but a positive finite duration is a ConfigError naming the key and the accepted forms."""
    with pytest.raises(ConfigError, match=r'^satellites\.cpu\.every: .*; write a duration like "250ms"'):
        topology.parse_duration(value, where="satellites.cpu.every")


# -- stage 1: schema -----------------------------------------------------------


def test_toml_syntax_error_gives_line_and_column() -> None:
    """A TOML syntax error is reported with tomllib's line and column."""
    problem = only_problem("[dsat]\nprefix = \n")
    assert problem.startswith("demo.toml: (syntax): ")
    assert "line 2, column" in problem and "fix the TOML syntax" in problem


def test_unknown_key_suggests_the_close_one() -> None:
    """An unknown key is named with its path, a did-you-mean and the valid keys."""
    problem = only_problem(BASE.replace('use = "t"', 'use = "t"\ncodek = "json"'))
    assert problem == (
        'demo.toml: satellites.rate.codek: unknown key; did you mean "codec"? '
        "valid keys are: use, every, next, options, host, listen, pattern, codec, watchdog"
    )


def test_unknown_table_suggests_the_close_one() -> None:
    """An unknown top-level table is named with a did-you-mean."""
    problem = only_problem(BASE + "[orchestre]\nmax_queue = 1\n")
    assert problem.startswith('demo.toml: orchestre: unknown table; did you mean "orchester"?')


def test_wrong_type_names_the_expected_type_and_an_example() -> None:
    """A value of the wrong type names the key, what was expected and an example to copy."""
    problem = only_problem(BASE.replace('next = ["rate"]', 'next = "rate"'))
    assert problem == (
        "demo.toml: satellites.cpu.next: must be a list, not str 'rate'; write e.g. next = [\"orchester\"]"
    )
    assert "orchester.max_queue: must be an integer" in only_problem(BASE + '[orchester]\nmax_queue = "lots"\n')


def test_missing_use() -> None:
    """A satellite without `use` is reported with how to write it."""
    problem = only_problem(BASE + "[satellites.archive]\nhost = 'x'\n")
    assert problem == 'demo.toml: satellites.archive.use: missing; say which satellite runs here, e.g. use = "archive"'


def test_unknown_use_lists_the_valid_satellites() -> None:
    """An unknown `use` suggests the close name and lists every registered one."""
    problem = only_problem(BASE.replace('use = "t"', 'use = "tt"'))
    assert problem == 'demo.toml: satellites.rate.use: unknown satellite "tt"; did you mean "t"? valid: c, s, t'


def test_bad_duration_in_the_file() -> None:
    """A bad duration is reported at its key with the accepted forms."""
    problem = only_problem(BASE.replace('every = "10s"', 'every = "10 seconds"'))
    assert problem.startswith("demo.toml: satellites.cpu.every: '10 seconds' is not a duration; write a duration")


def test_the_watchdog_defaults_to_one_minute_and_a_collector_to_twice_its_every() -> None:
    """Without a watchdog key every step has [dsat] watchdog's default; a collector never less than twice its every."""
    topo = load(BASE.replace('every = "10s"', 'every = "5m"'))
    assert topo.watchdog == topology.DEFAULT_WATCHDOG == 60.0
    assert [topo.watchdog_of(step) for step in ("tracker", "orchester", "rate", "cpu")] == [60.0, 60.0, 60.0, 600.0]


def test_the_watchdog_is_set_for_all_steps_or_for_one_satellite() -> None:
    """[dsat] watchdog sets every step's; a satellite's own watchdog key sets its own."""
    topo = load('[dsat]\nwatchdog = "2m"\n' + BASE.replace('use = "t"', 'use = "t"\nwatchdog = "5s"'))
    assert [topo.watchdog_of(step) for step in ("tracker", "orchester", "rate", "cpu")] == [120.0, 120.0, 5.0, 120.0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[dsat]\nwatchdog = "500ms"\n' + BASE, "dsat.watchdog: '500ms' is too short"),
        ('[dsat]\nwatchdog = "never"\n' + BASE, "dsat.watchdog: 'never' is not a duration"),
        (
            BASE.replace('every = "10s"', 'every = "10s"\nwatchdog = "15s"'),
            "satellites.cpu.watchdog: '15s' is shorter than twice every (10s)",
        ),
    ],
)
def test_a_watchdog_too_short_or_no_duration_is_refused(text: str, problem: str) -> None:
    """A watchdog under a second, not a duration, or shorter than twice a collector's every fails with its key."""
    assert only_problem(text).startswith(f"demo.toml: {problem}")


def test_collector_needs_every() -> None:
    """A collector without `every` is told to add a schedule."""
    problem = only_problem(BASE.replace('every = "10s"\n', ""))
    assert problem == 'demo.toml: satellites.cpu.every: missing; collector "c" needs a schedule, e.g. every = "10s"'


@pytest.mark.parametrize("use", ["t", "s"])
def test_transforms_and_sinks_forbid_every(use: str) -> None:
    """`every` on a transform or a sink is an error telling to remove it."""
    problem = only_problem(BASE + f'[satellites.x]\nuse = "{use}"\nevery = "1s"\n')
    assert problem.startswith("demo.toml: satellites.x.every: a ")
    assert problem.endswith('runs on each batch it receives; remove "every"')


def test_sink_forbids_next() -> None:
    """A sink has no `next`."""
    problem = only_problem(BASE + '[satellites.x]\nuse = "s"\nnext = ["orchester"]\n')
    assert problem == 'demo.toml: satellites.x.next: a sink sends nothing on; remove "next"'


def test_collector_forbids_listen() -> None:
    """A collector has no input link."""
    problem = only_problem(BASE.replace('use = "c"', 'use = "c"\npattern = "pull"'))
    assert problem == 'demo.toml: satellites.cpu.pattern: a collector receives nothing; remove "pattern"'


def test_bad_pattern_lists_the_receiving_patterns() -> None:
    """A pattern must be a receiving one; sender patterns are refused with the valid list."""
    problem = only_problem(BASE + '[orchester]\npattern = "push"\n')
    assert (
        problem == "demo.toml: orchester.pattern: 'push' is not a receiving pattern; use one of: pull, sub, pair, rep"
    )


def test_bad_codec_lists_the_codecs() -> None:
    """A codec must come from the fixed table."""
    problem = only_problem(BASE.replace('use = "t"', 'use = "t"\ncodec = "pickle"'))
    assert problem == 'demo.toml: satellites.rate.codec: unknown codec "pickle"; valid: msgpack, json'


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("inproc://x", "inproc:// does not cross processes; use ipc://PATH or tcp://HOST:PORT"),
        ("http://x:1", "has no valid scheme; write ipc://PATH or tcp://HOST:PORT"),
        ("tcp://host", "is not a tcp address; write tcp://HOST:PORT with a port from 1 to 65535"),
        ("tcp://host:0", "is not a tcp address"),
        ("ipc://", "ipc:// address has no path"),
    ],
)
def test_bad_address(address: str, says: str) -> None:
    """Only ipc://PATH and tcp://HOST:PORT are addresses; the problem names the key and the fix."""
    problem = only_problem(BASE.replace('use = "t"', f'use = "t"\nlisten = "{address}"'))
    assert problem.startswith("demo.toml: satellites.rate.listen: ")
    assert says in problem


def test_bad_carbon_destination_and_protocol() -> None:
    """Carbon destinations are host:port and the protocol pickle or plaintext; both reported together."""
    found = problems(BASE.replace('"127.0.0.1:2004"]', '"127.0.0.1:2004", "carbon", "h:99999"]\nprotocol = "line"'))
    assert found == [
        'demo.toml: carbon.destinations[1]: \'carbon\' is not "host:port", "host:port:instance"'
        ' or "host:port=instance"; write e.g. "127.0.0.1:2004" (port 1-65535)',
        'demo.toml: carbon.destinations[2]: \'h:99999\' is not "host:port", "host:port:instance"'
        ' or "host:port=instance"; write e.g. "127.0.0.1:2004" (port 1-65535)',
        'demo.toml: carbon.protocol: unknown protocol "line"; use one of: pickle, plaintext',
    ]


@pytest.mark.parametrize("carbon", ["", "[carbon]\ndestinations = []\n"])
def test_carbon_needs_a_destination(carbon: str) -> None:
    """At least one carbon destination is required."""
    text = BASE.replace('[carbon]\ndestinations = ["127.0.0.1:2004"]\n', carbon)
    problem = only_problem(text)
    assert problem == 'demo.toml: carbon.destinations: at least one is needed; write destinations = ["127.0.0.1:2004"]'


def test_empty_routes_are_refused() -> None:
    """An orchester with no route would drop everything."""
    problem = only_problem(BASE + "[orchester.routes]\n")
    assert problem.startswith("demo.toml: orchester.routes: no route") and '"*" = ["carbon"]' in problem


@pytest.mark.parametrize("name", ["orchester", "carbon", "tracker", "self"])
def test_reserved_step_names(name: str) -> None:
    """The reserved step names cannot name a satellite."""
    problem = only_problem(BASE + f'[satellites.{name}]\nuse = "s"\n')
    assert problem.startswith(f'demo.toml: satellites.{name}: "{name}" is a reserved step name')
    assert problem.endswith("rename the satellite")


def test_every_schema_problem_is_reported_at_once() -> None:
    """Validation lists every problem, and the message is a count followed by one problem per line."""
    text = BASE.replace('every = "10s"', 'every = "often"').replace('use = "t"', 'use = "x"') + "[dsat]\nprefx = 'a'\n"
    with pytest.raises(ConfigError) as info:
        load(text)
    assert len(info.value.problems) == 3
    lines = str(info.value).splitlines()
    assert lines[0] == "demo.toml: 3 problems found"
    assert lines[1:] == info.value.problems
    assert [p.split(": ")[1] for p in lines[1:]] == [
        "dsat.prefx",
        "satellites.cpu.every",
        "satellites.rate.use",
    ]


def test_schema_problems_stop_before_the_graph_stage() -> None:
    """A stage that found problems stops validation: graph problems are not reported with schema ones."""
    found = problems(BASE.replace('next = ["rate"]', 'next = ["nowhere"]').replace('use = "t"', 'use = "x"'))
    assert len(found) == 1 and "satellites.rate.use" in found[0]


# -- stage 2: graph --------------------------------------------------------------


def test_unknown_next_suggests_the_close_step() -> None:
    """An unknown `next` names the key path, a did-you-mean and every step."""
    problem = only_problem(BASE.replace('next = ["rate"]', 'next = ["rat"]'))
    assert problem == (
        'demo.toml: satellites.cpu.next[0]: unknown step "rat"; did you mean "rate"? Steps are: cpu, rate, orchester'
    )


def test_unknown_route_target() -> None:
    """A route target must be a transform, a sink or carbon."""
    problem = only_problem(BASE + '[orchester.routes]\n"*" = ["carbon", "carbn"]\n')
    assert problem == (
        'demo.toml: orchester.routes."*"[1]: "carbn" is not a transform, a sink or carbon; '
        'did you mean "carbon"? use one of: rate, carbon'
    )


def test_a_collector_cannot_be_a_next_target() -> None:
    """Sending to a collector is refused: it has no input."""
    problem = only_problem(BASE + '[satellites.mem]\nuse = "c"\nevery = "1s"\nnext = ["cpu"]\n')
    assert problem == (
        'demo.toml: satellites.mem.next[0]: "cpu" is a collector and receives nothing; send to one of: rate, orchester'
    )


def test_cycle_is_reported_with_its_path() -> None:
    """A cycle among satellites is reported as the path a batch would loop along."""
    text = (
        BASE.replace('use = "t"', 'use = "t"\nnext = ["norm"]')
        + '[satellites.norm]\nuse = "t"\nnext = ["orchester", "rate"]\n'
    )
    problem = only_problem(text)
    assert problem == (
        "demo.toml: satellites.rate.next: cycle rate -> norm -> rate: a batch would loop forever; break the cycle"
    )


def test_cycle_through_the_orchester() -> None:
    """A route to a transform that sends back to the orchester is a cycle."""
    problem = only_problem(BASE + '[orchester.routes]\n"*" = ["rate"]\n')
    assert problem == (
        "demo.toml: satellites.rate.next: cycle rate -> orchester -> rate: a batch would loop forever; break the cycle"
    )


def test_needs_a_source() -> None:
    """Without a collector or an ingress listener nothing produces data."""
    found = problems('[carbon]\ndestinations = ["127.0.0.1:2004"]\n')
    assert found == [
        "demo.toml: satellites: no collector and no [ingress] listener, nothing produces data;"
        ' add one, e.g. [satellites.cpu] use = "cpu"',
    ]


def test_an_ingress_listener_is_a_source() -> None:
    """A topology with no satellites is valid when the orchester listens for Graphite clients."""
    topo = topology.loads(
        '[ingress]\nplaintext = "127.0.0.1:2003"\n[carbon]\ndestinations = ["127.0.0.1:2004"]\n',
        path=Path("demo.toml"),
        registry=REGISTRY,
    )
    assert topo.ingress.plaintext == ("127.0.0.1", 2003) and not topo.satellites


def test_sink_needed_when_satellites_exist() -> None:
    """Satellites of which none reaches the orchester or a sink end nothing."""
    text = (
        '[carbon]\ndestinations = ["127.0.0.1:2004"]\n[satellites.a]\nuse = "c"\nevery = "1s"\nnext = ["t"]\n'
        '[satellites.t]\nuse = "t"\nnext = ["u"]\n[satellites.u]\nuse = "t"\nnext = ["t"]\n'
    )
    assert any("no sink, nothing ends a batch" in p for p in problems(text))


def test_destinations_take_carbon_relay_instances_and_replication() -> None:
    """ "host:port:instance" destinations as carbon-relay writes them; a replication factor up to their number."""
    topo = topology.loads(
        BASE.replace(
            'destinations = ["127.0.0.1:2004"]', 'destinations = ["127.0.0.1:2004:a", "[::1]:2104:b"]\nreplication = 2'
        ),
        path=Path("demo.toml"),
        registry=REGISTRY,
    )
    assert topo.carbon.destinations == (("127.0.0.1", 2004, "a"), ("::1", 2104, "b"))
    assert topo.carbon.replication == 2
    twins = BASE.replace('destinations = ["127.0.0.1:2004"]', 'destinations = ["h:2004", "h:2104"]')
    assert any("share a host and instance" in p for p in problems(twins))
    too_many = BASE.replace('destinations = ["127.0.0.1:2004"]', 'destinations = ["h:2004"]\nreplication = 2')
    assert any("carbon.replication" in p for p in problems(too_many))


def test_hashing_is_one_of_three_and_defaults_to_carbon_ch() -> None:
    """``[carbon] hashing``: carbon_ch by default, fnv1a_ch and jump_fnv1a_ch, a typo refused with a suggestion."""
    assert load(BASE).carbon.hashing == "carbon_ch"
    for hashing in topology.HASHINGS:
        text = BASE.replace('destinations = ["127.0.0.1:2004"]', f'destinations = ["h:1"]\nhashing = "{hashing}"')
        assert load(text).carbon.hashing == hashing
    typo = BASE.replace('destinations = ["127.0.0.1:2004"]', 'destinations = ["h:1"]\nhashing = "fnv1a"')
    assert only_problem(typo).endswith(
        'carbon.hashing: unknown hashing "fnv1a"; did you mean "fnv1a_ch"? '
        "use one of: carbon_ch, fnv1a_ch, jump_fnv1a_ch"
    )


def test_carbon_c_relay_destinations_are_accepted_as_written() -> None:
    """``host:port=instance`` (carbon-c-relay) is ``host:port:instance`` (carbon-relay); a bad one is refused."""
    text = BASE.replace('destinations = ["127.0.0.1:2004"]', 'destinations = ["10.0.0.1:2003=a", "[::1]:2104=b"]')
    assert load(text).carbon.destinations == (("10.0.0.1", 2003, "a"), ("::1", 2104, "b"))
    for bad in ("h:1:a=b", "h:1=", "h=a", "h:1=a:b"):
        assert topology.parse_destination(bad) is None, bad


@pytest.mark.parametrize(
    ("hashing", "destinations", "clash"),
    [
        ("carbon_ch", '"h:2004", "h:2104"', True),  # carbon_ch hashes the host, not the port
        ("fnv1a_ch", '"h:2004", "h:2104"', False),  # fnv1a_ch hashes host:port
        ("fnv1a_ch", '"h:2004=a", "g:2104=a"', True),  # ... or the instance alone
        ("jump_fnv1a_ch", '"h:2004", "h:2004"', True),
        ("jump_fnv1a_ch", '"h:2004=1", "g:2004=1"', True),
    ],
)
def test_destinations_the_rings_keys_cannot_tell_apart_are_refused(
    hashing: str, destinations: str, clash: bool
) -> None:
    """What tells destinations apart depends on the method: carbon-c-relay's ring keys."""
    text = BASE.replace('destinations = ["127.0.0.1:2004"]', f'destinations = [{destinations}]\nhashing = "{hashing}"')
    if clash:
        assert "cannot tell them apart" in only_problem(text)
    else:
        assert len(load(text).carbon.destinations) == 2


def test_jump_instances_need_one_order() -> None:
    """jump_fnv1a_ch orders by instance as carbon-c-relay does: numbers as numbers, or words; a mix with no order
    is refused."""
    assert [
        topology.jump_compare(a, b) for a, b in [("9", "10"), ("10", "9"), ("a", "b"), ("1", None), (None, "1")]
    ] == [
        -1,
        1,
        -1,
        -1,
        1,
    ]
    assert topology.jump_compare("0", "4294967296") == 0  # carbon-c-relay's (int) difference
    same = BASE.replace(
        'destinations = ["127.0.0.1:2004"]', 'destinations = ["h:1=1", "h:2=01"]\nhashing = "jump_fnv1a_ch"'
    )
    assert "no one order" in only_problem(same)  # one number, two instances
    mixed = BASE.replace(
        'destinations = ["127.0.0.1:2004"]', 'destinations = ["h:1=9", "h:2=10", "h:3=1a"]\nhashing = "jump_fnv1a_ch"'
    )
    assert "no one order" in only_problem(mixed)


def test_a_sink_satellite_alone_ends_batches() -> None:
    """A collector sending only to a sink satellite is a complete topology."""
    topo = load(BASE.replace('use = "t"', 'use = "s"'))
    assert topo.satellites["rate"].kind == "sink"


def test_two_binds_on_one_address() -> None:
    """Two receiving sockets on one address are refused, naming both keys."""
    problem = only_problem(BASE + '[orchester]\ncontrol = "ipc://{run_dir}/tracker-events"\n')
    assert problem == (
        "demo.toml: orchester.control: ipc:///tmp/dsat-topo/.dsat/run/tracker-events is already bound by "
        "tracker.events; give each a different address"
    )


def test_ipc_path_over_the_os_limit() -> None:
    """A unix socket path longer than 107 bytes is refused with the limit and the fix."""
    long_dir = "/tmp/" + "d" * 100
    problem = only_problem(BASE + f'[orchester]\nlisten = "ipc://{long_dir}/orchester"\n')
    assert problem.startswith("demo.toml: orchester.listen: the unix socket path ")
    assert "over the OS limit of 107; use a shorter [dsat] run_dir or address" in problem


# -- the preflight: this machine --------------------------------------------------------


def test_port_in_use(short_tmp: Path) -> None:
    """The machine preflight reports a tcp bind address whose port is taken; loading does not look."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = f'[dsat]\nrun_dir = "{short_tmp}"\n' + BASE + f'[orchester]\nlisten = "tcp://127.0.0.1:{port}"\n'
        load(text)  # not checked unless asked
        problem = only_problem(text, machine=True)
    assert problem.startswith(f"demo.toml: orchester.listen: cannot bind tcp://127.0.0.1:{port} (")
    assert problem.endswith("stop what uses it or pick another port")


def test_free_tcp_port_and_writable_run_dir_pass(short_tmp: Path) -> None:
    """The machine preflight creates run_dir and accepts free ports."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_dir = short_tmp / "run"
    text = f'[dsat]\nrun_dir = "{run_dir}"\n' + BASE + f'[orchester]\nlisten = "tcp://127.0.0.1:{port}"\n'
    load(text, machine=True)
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []


def test_unwritable_run_dir(short_tmp: Path) -> None:
    """The machine preflight reports a run_dir that cannot be created; loading does not check it."""
    plain = short_tmp / "plain"
    plain.write_text("")
    text = f'[dsat]\nrun_dir = "{plain}/run"\n' + BASE
    load(text)
    problem = only_problem(text, machine=True)
    assert problem.startswith(f"demo.toml: dsat.run_dir: {plain}/run is not a writable folder (")
    assert problem.endswith("pick another")


def test_an_ingress_port_in_use_is_reported_beside_tcp_links(tmp_path: Path) -> None:
    """The ingress listeners are checked when the topology also binds tcp links (their loop once hid them)."""
    with socket.socket() as busy, socket.socket() as probe:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        probe.bind(("127.0.0.1", 0))
        port, free = busy.getsockname()[1], probe.getsockname()[1]
        probe.close()
        text = f'[dsat]\nrun_dir = "{tmp_path}"\n' + BASE + f'[orchester]\nlisten = "tcp://127.0.0.1:{free}"\n'
        text += f'[ingress]\nplaintext = "127.0.0.1:{port}"\n[spool]\npath = ""\n'
        problem = only_problem(text, machine=True)
    assert problem.startswith(f"demo.toml: ingress.plaintext: cannot listen on 127.0.0.1:{port} (")


def test_the_rule_files_are_the_preflights_not_the_loaders(tmp_path: Path) -> None:
    """Loading reads no rule file; the preflight reports a missing one, then every bad line of one that exists."""
    text = BASE + f'[rules]\nrewrite = "{tmp_path}/rewrite.conf"\n'
    load(text)
    assert only_problem(text, files=True) == (
        f"demo.toml: rules.rewrite: {tmp_path}/rewrite.conf is not a readable file; write the rules there or fix"
        " the path"
    )
    (tmp_path / "rewrite.conf").write_text("[pre]\n(unclosed = x\n")
    problem = only_problem(text, files=True)
    assert problem.startswith(f"demo.toml: rules: {tmp_path}/rewrite.conf:2: ") and problem.endswith(
        "; fix the rule file"
    )


def test_the_machine_preflight_of_a_multi_host_topology_needs_the_host() -> None:
    """Checking this machine for a topology with [hosts] asks which host it is; the files alone do not."""
    topo = load(MULTI)
    preflight.check(topo)
    with pytest.raises(ConfigError) as info:
        preflight.check(topo, machine=True)
    assert info.value.problems == [
        "demo.toml: --host: this topology spans hosts; say which one this is: one of hub, web01, web02"
    ]


def machine_problems(tmp_path: Path, ingress: str) -> list[str]:
    """What this machine's preflight finds for a one-host topology whose ``[ingress]`` holds *ingress* (its key
    path and message, without the file's name)."""
    text = f'[dsat]\nrun_dir = "{tmp_path}"\n[spool]\npath = ""\n[ingress]\n{ingress}'
    text += '[carbon]\ndestinations = ["127.0.0.1:2004"]\n'
    try:
        preflight.check(topology.loads(text, path=tmp_path / "t.toml", registry=REGISTRY), machine=True)
    except ConfigError as exc:
        return [problem.split(": ", 1)[1] for problem in exc.problems]
    return []


@contextlib.contextmanager
def busy_tcp_port() -> Iterator[int]:
    """A loopback TCP port another socket listens on, while the block runs."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_an_ingress_port_in_use_is_reported(tmp_path: Path) -> None:
    """With the environment checked, an [ingress] port another process listens on is a problem."""
    with busy_tcp_port() as port:
        found = machine_problems(tmp_path, f'plaintext = "127.0.0.1:{port}"\n')
    assert [problem.split(" (")[0] for problem in found] == [f"ingress.plaintext: cannot listen on 127.0.0.1:{port}"]


def test_the_statsd_port_must_be_free_on_tcp_too_and_no_two_listeners_share_a_port(tmp_path: Path) -> None:
    """statsd listens on UDP and TCP: a TCP listener on its port is a problem, and so is another [ingress] TCP
    listener given the same port (it was allowed when statsd was UDP alone)."""
    with busy_tcp_port() as port:
        found = machine_problems(tmp_path, f'statsd = "127.0.0.1:{port}"\n')
    assert [problem.split(" (")[0] for problem in found] == [f"ingress.statsd: cannot listen on 127.0.0.1:{port}"]
    assert "(TCP: " in found[0]
    found = machine_problems(tmp_path, f'plaintext = "127.0.0.1:{port}"\nstatsd = "127.0.0.1:{port}"\n')
    assert found == [
        f"ingress.statsd: 127.0.0.1:{port} is also ingress.plaintext's TCP port; give each listener its own port"
    ]


def test_the_dogstatsd_socket_needs_statsd_a_short_path_and_a_free_one(tmp_path: Path) -> None:
    """[ingress] statsd_socket: beside the topology when relative; refused without statsd (whose aggregator it
    feeds) or over a Unix socket path's length; this machine: not a plain file, not a socket a process receives on,
    and a socket file nobody receives on is fine (the orchester takes it over)."""
    base = '[carbon]\ndestinations = ["127.0.0.1:2004"]\n[spool]\npath = ""\n'
    topo = topology.loads(
        base + '[ingress]\nstatsd = "127.0.0.1:8125"\nstatsd_socket = "run/dsd.socket"\n',
        path=tmp_path / "t.toml",
        registry=REGISTRY,
    )
    assert topo.ingress.statsd_socket == tmp_path / "run" / "dsd.socket"
    with pytest.raises(ConfigError) as error:
        topology.loads(base + '[ingress]\nstatsd_socket = "/tmp/dsd.socket"\n', path=tmp_path / "t.toml")
    assert [p.split(": ", 2)[1] for p in error.value.problems] == ["ingress.statsd_socket"]
    assert "needs statsd" in error.value.problems[0]
    with pytest.raises(ConfigError) as error:
        long_path = "/tmp/" + "d" * 120 + ".socket"
        text = base + f'[ingress]\nstatsd = "127.0.0.1:8125"\nstatsd_socket = "{long_path}"\n'
        topology.loads(text, path=tmp_path / "t.toml")
    assert "longer than a Unix socket path may be" in error.value.problems[0]

    path = tmp_path / "s.sock"
    ingress = f'statsd = "127.0.0.1:{free_port()}"\nstatsd_socket = "{path}"\n'

    def machine() -> list[str]:
        return [problem.split(": ", 1)[1] for problem in machine_problems(tmp_path, ingress)]

    path.write_text("")
    assert machine() == [f"{path} is a file, not a socket; remove it or pick another path"]
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(str(path))
        assert machine() == [f"{path}: a process receives on it; stop it or pick another path"]
    assert path.exists() and machine() == []  # left behind by a process gone: taken over


# -- hosts ---------------------------------------------------------------------


def test_links_between_hosts_get_tcp_addresses_derived_from_the_binding_host() -> None:
    """Each link with a peer on another host binds tcp on its host's address at port_base + a fixed offset."""
    topo = load(MULTI)
    run = "/tmp/dsat-topo/.dsat/run"
    assert (topo.tracker.events, topo.tracker.states) == ("tcp://10.0.0.1:7400", "tcp://10.0.0.1:7401")
    assert topo.orchester.listen.address == "tcp://10.0.0.1:7402"
    assert topo.satellites["rate"].listen == Link("tcp://[fd00::12]:7410", "pull")
    # Only the CLI on the hub talks to these: they stay ipc.
    assert (topo.tracker.status, topo.orchester.control) == (
        f"ipc://{run}/tracker-status",
        f"ipc://{run}/orchester-control",
    )
    assert dict(topo.tcp_binders) == {
        "tcp://10.0.0.1:7400": "hub",
        "tcp://10.0.0.1:7401": "hub",
        "tcp://10.0.0.1:7402": "hub",
        "tcp://[fd00::12]:7410": "web02",
    }
    assert topo.secured("tcp://10.0.0.1:7402") and not topo.secured(f"ipc://{run}/tracker-status")


def test_a_group_places_one_collector_on_many_hosts_and_the_hub_defaults_to_the_first_host() -> None:
    """`host = "web"` runs cpu on web01 and web02; steps without host run where the orchester does."""
    topo = load(MULTI)
    assert topo.satellites["cpu"].hosts == ("web01", "web02")
    assert (topo.orchester.host, topo.tracker.host) == ("hub", "hub")
    assert topo.steps_on("web02") == ["cpu", "rate"]
    assert topo.steps_on("hub") == ["tracker", "orchester"]
    assert [key for key, _ in topo.binds_on("web02")] == ["satellites.rate.listen"]


def test_a_link_whose_peers_share_its_host_stays_ipc() -> None:
    """A transform fed only by a collector of its own host (and the hub's orchester on the same host) keeps ipc."""
    text = MULTI.replace('host = "web"\nnext = ["rate"]', 'host = "web"').replace('host = "web02"\n', 'host = "hub"\n')
    topo = load(text)
    assert topo.satellites["rate"].listen is not None
    assert topo.satellites["rate"].listen.address == "ipc:///tmp/dsat-topo/.dsat/run/sat-rate"


def test_host_names_are_checked_with_a_suggestion() -> None:
    """An unknown host or group is reported with the close name and every valid one."""
    problem = only_problem(MULTI.replace('host = "web02"', 'host = "web2"'))
    assert problem == (
        'demo.toml: satellites.rate.host: unknown host "web2"; did you mean "web02"?'
        " hosts and groups are: hub, web01, web02, web"
    )


def test_a_transform_runs_on_one_host_only() -> None:
    """Only collectors may run on several hosts: a transform's senders would not know which one to reach."""
    problem = only_problem(MULTI.replace('host = "web02"', 'host = "web"'))
    assert "satellites.rate.host: a transform runs on one host" in problem


def test_host_without_a_hosts_table_is_refused() -> None:
    """`host` in a one-machine topology names nothing: the fix is a [hosts] table."""
    problem = only_problem(BASE + 'host = "web01"\n')
    assert "satellites.rate.host: [hosts] names no host; add [hosts.NAME]" in problem


def test_an_address_written_by_hand_for_a_link_between_hosts_is_refused() -> None:
    """ipc cannot cross hosts, and hand-written tcp is plain: both are refused unless insecure = true."""
    ipc = only_problem(MULTI + 'listen = "ipc:///tmp/rate"\n')
    assert "satellites.rate.listen: 'ipc:///tmp/rate' cannot be reached from hub, web01" in ipc
    plain = only_problem(MULTI + 'listen = "tcp://10.0.0.12:9000"\n')
    assert "satellites.rate.listen: tcp://10.0.0.12:9000 is plain tcp written by hand" in plain
    topo = load(
        MULTI.replace("port_base = 7400", "port_base = 7400\ninsecure = true") + 'listen = "tcp://10.0.0.12:9000"\n'
    )
    assert topo.satellites["rate"].listen == Link("tcp://10.0.0.12:9000", "pull")
    assert not topo.secured("tcp://10.0.0.12:9000") and not topo.secured("tcp://10.0.0.1:7402")


def test_a_host_needs_an_address_and_a_group_known_hosts() -> None:
    """A host without address, and a group naming an unknown host, are reported with the fix."""
    assert (
        "hosts.web01.address: needed: the address other hosts reach it at"
        in problems(MULTI.replace('address = "10.0.0.11"', ""))[0]
    )
    problem = only_problem(
        MULTI.replace('web = ["web01", "web02"]', 'web = ["web01", "web09"]').replace('"web"', '"web01"')
    )
    assert problem == "demo.toml: groups.web: unknown host 'web09'; hosts are: hub, web01, web02"


def test_an_unknown_host_asked_for_is_refused() -> None:
    """`--host` names a host of the topology; the problem lists them."""
    with pytest.raises(ConfigError) as info:
        preflight.check(load(MULTI), host="web03")
    assert info.value.problems == [
        'demo.toml: --host: "web03" is not in [hosts]; did you mean "web02"? hosts are: hub, web01, web02'
    ]


# -- an orchester pair -----------------------------------------------------------


def test_an_orchester_pair_gives_each_server_its_own_addresses_primary_first() -> None:
    """host = [a, b]: a is the primary, b the backup; each binds the tracker, orchester and heartbeat links on its
    own address, the tracker runs on both, and for_server puts a server's own addresses in front."""
    topo = load(PAIR)
    (primary, backup) = topo.servers
    assert (primary.host, primary.role, backup.host, backup.role) == ("hub", "primary", "hub2", "backup")
    assert (backup.events, backup.states, backup.listen, backup.heartbeat) == tuple(
        f"tcp://10.0.0.2:{port}" for port in (7400, 7401, 7402, 7403)
    )
    assert topo.orchester.listen.address == primary.listen == "tcp://10.0.0.1:7402"
    assert (topo.orchester.heartbeat, topo.orchester.missed_beats) == (0.25, 4)
    assert topo.hosts_of("tracker") == topo.hosts_of("orchester") == ("hub", "hub2")
    assert topo.steps_on("hub2") == ["tracker", "orchester"]
    assert topo.tcp_binders[backup.heartbeat] == "hub2" and topo.tcp_binders[primary.listen] == "hub"
    own = topo.for_server("hub2")
    assert (own.tracker.events, own.orchester.listen.address) == (backup.events, backup.listen)
    assert ("orchester.heartbeat", backup.heartbeat) in topo.binds_on("hub2")
    assert primary.listen not in dict(topo.binds_on("hub2")).values()


def test_an_orchester_pair_is_checked() -> None:
    """Three hosts, a tracker.host beside a pair, hand-written server addresses and zero missed beats are refused."""
    assert "orchester.host: names more than two hosts" in only_problem(
        PAIR.replace('host = ["hub", "hub2"]', 'host = ["hub", "hub2", "web01"]')
    )
    assert "tracker.host: with an orchester pair a tracker runs beside each orchester" in only_problem(
        PAIR + '\n[tracker]\nhost = "hub"\n'
    )
    written = PAIR.replace("missed_beats = 4", 'missed_beats = 4\nlisten = "tcp://10.0.0.1:7999"')
    assert "orchester.listen: with an orchester pair DSAT derives each server's tcp address" in " ".join(
        problems(written.replace("port_base = 7400", "port_base = 7400\ninsecure = true"))
    )
    assert "orchester.missed_beats: 0 must be at least 1" in only_problem(
        PAIR.replace("missed_beats = 4", "missed_beats = 0")
    )


def test_the_trackers_defaults_are_those_of_its_state_machines() -> None:
    """[tracker]'s retry and breaker defaults are the ones dsat.fsm and dsat.breaker use when given none."""
    conf = TrackerConf(events="e", states="s", status="t")
    assert (conf.max_retries, conf.backoff) == (fsm.DEFAULT_MAX_RETRIES, fsm.DEFAULT_BACKOFF)
    assert (conf.breaker_window, conf.breaker_threshold, conf.breaker_min_failures, conf.breaker_cooldown) == (
        breaker.DEFAULT_WINDOW,
        breaker.DEFAULT_THRESHOLD,
        breaker.DEFAULT_MIN_FAILURES,
        breaker.DEFAULT_COOLDOWN,
    )


# -- one table at a time ---------------------------------------------------------


def table_problems() -> schema._Problems:
    return schema._Problems(PATH)


def test_build_converts_each_plain_key_and_keeps_the_dataclass_default_for_absent_ones() -> None:
    """A duration key becomes seconds, a number key a float; an absent key is the dataclass's default, and what
    the table's builder computed wins over a key of the same name."""
    found = table_problems()
    conf = schema._build(
        found,
        "tracker",
        {"timeout": "1m", "backoff": 3, "host": "raw"},
        TrackerConf,
        events="e",
        states="s",
        status="t",
    )
    assert (conf.timeout, conf.backoff, conf.metrics_every) == (60.0, 3.0, TrackerConf.metrics_every)
    assert isinstance(conf.backoff, float) and conf.host == "raw" and found.items == []
    assert schema._build(found, "tracker", {"host": "raw"}, TrackerConf, events="e", states="s", status="t", host="")
    bad = schema._build(found, "tracker", {"timeout": "soon"}, TrackerConf, events="e", states="s", status="t")
    assert bad.timeout == TrackerConf.timeout
    assert found.items == ["demo.toml: tracker.timeout: 'soon' is not a duration; " + schema._DURATION_HINT]


def test_tracker_table_alone_reports_its_bounds() -> None:
    found = table_problems()
    conf = tables._tracker(found, {"max_retries": -1, "breaker_threshold": 2}, Path("/run"))
    assert conf.events == "ipc:///run/tracker-events" and conf.host == ""
    assert found.items == [
        "demo.toml: tracker.max_retries: -1 must be 0 or more",
        "demo.toml: tracker.breaker_threshold: 2 is a share of failures: 0 to 1",
    ]


def test_orchester_table_alone_defaults_and_bounds() -> None:
    found = table_problems()
    conf = tables._orchester(found, {}, Path("/run"), ())
    assert conf == OrchesterConf(
        Link("ipc:///run/orchester", "pull"), "ipc:///run/orchester-control", {"*": ("carbon",)}
    )
    assert found.items == []
    tables._orchester(found, {"max_queue": 0, "missed_beats": 0, "routes": {}}, Path("/run"), ("a", "b"))
    assert [item.split(": ")[1] for item in found.items] == [
        "orchester.missed_beats",
        "orchester.routes",
        "orchester.max_queue",
    ]


def test_a_pair_refuses_a_tracker_host_and_puts_the_tracker_on_the_primary() -> None:
    hosts = {name: topology.Host(name, f"10.0.0.{i}") for i, name in enumerate(("a", "b"), 1)}
    found = table_problems()
    place = tables._Placer(found, hosts, {})
    pair = tables._orchester_hosts(found, {"host": ["a", "b"]}, place, "a")
    assert pair == ("a", "b")
    assert tables._tracker_host(found, {}, place, pair) == "a" and found.items == []
    tables._tracker_host(found, {"host": "b"}, place, pair)
    assert found.items == [
        "demo.toml: tracker.host: with an orchester pair a tracker runs beside each orchester; remove the key"
    ]


def test_carbon_table_alone() -> None:
    found = table_problems()
    assert tables._carbon(found, {"destinations": ["h:2004:a", "[::1]:2104"]}) == CarbonConf(
        (("h", 2004, "a"), ("::1", 2104, None))
    )
    assert found.items == []
    tables._carbon(found, {"destinations": ["h:2004", "h:2104"], "replication": 3, "protocol": "json"})
    assert [item.split(": ")[1] for item in found.items] == [
        "carbon.destinations",
        "carbon.replication",
        "carbon.protocol",
    ]


def test_spool_table_alone() -> None:
    found = table_problems()
    assert tables._spool(found, {"path": ""}, PATH).path is None
    conf = tables._spool(found, {"max_mb": 2, "policy": "block", "replay_rate": 10}, PATH)
    assert (conf.path, conf.max_bytes, conf.policy, conf.sync, conf.replay_rate) == (
        PATH.parent / "spool/carbon.db",
        2 * 1024 * 1024,
        "block",
        "full",
        10.0,
    )
    assert found.items == []
    tables._spool(found, {"policy": "wait", "replay_rate": 0}, PATH)
    assert [item.split(": ")[1] for item in found.items] == ["spool.policy", "spool.replay_rate"]


def test_ingress_table_alone() -> None:
    found = table_problems()
    conf = tables._ingress(found, {"plaintext": "[::1]:2003", "statsd_flush": "2s", "max_line": 100}, PATH)
    assert (conf.plaintext, conf.statsd, conf.statsd_flush, conf.max_line) == (("::1", 2003), None, 2.0, 100)
    assert conf.statsd_percentiles == topology.IngressConf.statsd_percentiles and found.items == []
    tables._ingress(found, {"plaintext_tls": "0.0.0.0:2443", "statsd_percentiles": [150]}, PATH)
    assert [item.split(": ")[1] for item in found.items] == [
        "ingress.statsd_percentiles",
        "ingress.tls_certificate",
        "ingress.tls_key",
    ]


def test_run_dir_is_beside_the_topology_unless_absolute() -> None:
    assert tables._run_dir({}, PATH) == PATH.parent / ".dsat/run"
    assert tables._run_dir({"run_dir": "/var/run/dsat/../dsat"}, PATH) == Path("/var/run/dsat")


def test_routes_keep_the_good_ones_and_name_each_bad_one() -> None:
    found = table_problems()
    routes = tables._routes(found, {"*": ["carbon"], "audit": "carbon", "x": []})
    assert routes == {"*": ("carbon",)}
    assert [item.split(": ")[1] for item in found.items] == ["orchester.routes.audit", "orchester.routes.x"]


def test_rules_table_alone() -> None:
    found = table_problems()
    conf = tables._rules_table(found, {"rewrite": "rw.conf", "deny": ["^tmp\\."]}, PATH)
    assert (conf.rewrite, conf.aggregation, conf.allow, conf.deny) == (PATH.parent / "rw.conf", None, (), ("^tmp\\.",))
    tables._rules_table(found, {"allow": ["("], "deny": [1]}, PATH)
    assert [item.split(": ")[1] for item in found.items] == ["rules.allow[0]", "rules.deny"]


def test_ingress_connection_limits_are_read_with_their_defaults_and_checked() -> None:
    """max_connections, idle_timeout, idle_grace: the ingress's defaults, durations as seconds, nonsense refused."""
    from dsat import ingress

    found = table_problems()
    default = tables._ingress(found, {}, PATH)
    assert (default.max_connections, default.idle_timeout, default.idle_grace) == (
        ingress.MAX_CONNECTIONS,
        ingress.IDLE_TIMEOUT,
        ingress.IDLE_GRACE,
    )
    conf = tables._ingress(found, {"max_connections": 50, "idle_timeout": "2m", "idle_grace": "1s"}, PATH)
    assert (conf.max_connections, conf.idle_timeout, conf.idle_grace) == (50, 120.0, 1.0) and found.items == []
    tables._ingress(found, {"max_connections": 0, "idle_timeout": "1s", "idle_grace": "5s"}, PATH)
    assert [item.split(": ")[1] for item in found.items] == ["ingress.max_connections", "ingress.idle_grace"]
