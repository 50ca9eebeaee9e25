"""dsat.naming: safe components, metric paths, cleaned outside paths, the Whisper containment guarantee."""

from __future__ import annotations

import ast
import configparser
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from carbon.util import TaggedSeries

from dsat import naming
from dsat.cache import entry_bytes
from dsat.errors import BadName
from dsat.naming import MAX_COMPONENT_BYTES, MAX_PATH_CHARS, PathCache, clean_path, component, metric_path
from tests.harness import ROOT

SAFE_PUNCTUATION = set("_-:+=@%#~")

CORPUS = [
    "../../etc/passwd",
    "/etc/passwd",
    "a/../../b",
    "..",
    ".",
    "...",
    "",
    "a\\b",
    "..\\..\\windows\\system32",
    "C:\\x",
    "a\x00b",
    "\x00",
    "a\nb",
    "a\rb\tc\x1b[31m\x7f\x85",
    "a b",
    " ",
    "\u2215etc\u2215passwd",  # division slash
    "\uff0e\uff0e/x",  # fullwidth dots
    "\uff0e\uff0e\uff0fetc",  # fullwidth dots and solidus
    "\uff43\uff50\uff55",  # fullwidth "cpu"
    "\u202eevil.wsp",  # right-to-left override
    "a\u200fb\u200e",  # RTL and LTR marks
    "a\u2028b\u2029",  # line and paragraph separators
    "e\u0301\u0301",  # combining marks
    "\ufdfa",  # one character that NFKC expands to 18
    "\ufdfa" * 12,
    "x" * 10_000,
    "\u00e9" * 10_000,
    "a." * 5_000,
    "." * 10_000,
    "x" * MAX_COMPONENT_BYTES,
    "x" * (MAX_COMPONENT_BYTES + 1),
    ".".join(["x" * 100] * 10),
    "\U0001f525.\U0001f4be",  # emoji
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family emoji with zero-width joiners
    "*.{a,b}[0-9]?",
    "a;tag=1",  # carbon reads ";" as a tagged series
    # Tag injection: carbon's tagged forms with hostile keys and values.
    "a;k=../../etc/passwd",
    "a;k=/etc/passwd",
    "../../x;k=v",
    "a;../..=v",
    "a;k=v\x00",
    "a;k\x00=v",
    "a;k=v;;",
    "a;=v",
    "a;k",
    "a;k==v",
    "a;k=~v",
    "~;k=v",
    "a;k!=v",
    "a;k=x y",
    "a;k=x\u2003y",
    'a{k="../../x",j="/"}',
    'a{k="v"',
    "a;" + ";".join(f"k{i}=v" for i in range(5000)),
    "a;k=" + "v" * 100_000,
    "a;k=" + "\U0001f525" * 300,
    'a;z={"};b=1',
    "%2e%2e%2fetc",
    "~root",
    "-",
    "_",
    "\ud800x",  # lone surrogate, as surrogateescape decoding leaves
    "servers.web1.cpu",
]


def tree_file(root: Path, path: str, *, hash_only: bool = True) -> str:
    """Where carbon writes *path* under *root*: dots become directories, plus ``.wsp``; tagged: carbon's encoding.

    A tagged series goes under ``_tagged/`` as carbon's own ``TaggedSeries.encode``
    puts it: its hash as file name (``TAG_HASH_FILENAMES``, carbon's default and
    DSAT's), or with *hash_only* false the name itself, dots as ``_DOT_``.
    """
    if naming.is_tagged(path):
        return os.path.realpath(os.path.join(root, TaggedSeries.encode(path, os.sep, hash_only=hash_only) + ".wsp"))
    return os.path.realpath(os.path.join(root, path.replace(".", "/") + ".wsp"))


def assert_contained(root: Path, path: str) -> None:
    """*path* names a file strictly inside *root*, one directory level per component, each a legal name."""
    if naming.is_tagged(path):
        assert_tagged_contained(root, path)
        return
    parts = path.split(".")
    assert all(parts), path
    for part in parts:
        assert all(ch.isalnum() or ch in SAFE_PUNCTUATION for ch in part), part
        assert len(part.encode("utf-8")) <= MAX_COMPONENT_BYTES
    assert len(path) <= MAX_PATH_CHARS
    real = tree_file(root, path)
    assert real.startswith(str(root) + os.sep)
    assert Path(real).relative_to(root).parts == (*parts[:-1], parts[-1] + ".wsp")


def assert_tagged_contained(root: Path, path: str) -> None:
    """A tagged *path* is carbon-canonical, its name part a safe path, and both of carbon's files are under _tagged/."""
    assert TaggedSeries.parse(path).path == path
    name, _tags = naming.parse_tags(path)
    assert_contained(root, name)
    assert len(path) <= MAX_PATH_CHARS
    for hash_only in (True, False):
        assert tree_file(root, path, hash_only=hash_only).startswith(str(root / "_tagged") + os.sep)


def results(text: str) -> list[str]:
    """Every path made of *text* as a full path, a component, a host/step/metric; BadName skipped."""
    calls: list[Callable[[], str]] = [
        lambda: clean_path(text),
        lambda: component(text),
        lambda: metric_path("dsat", text, text, text),
        lambda: metric_path("dsat", "host", "step", text),
    ]
    out = []
    for call in calls:
        try:
            out.append(call())
        except BadName as exc:
            assert exc.reason in ("bad_name", "bad_tag")
    return out


@pytest.fixture
def whisper_dir(tmp_path: Path) -> Path:
    root = tmp_path / "whisper"
    root.mkdir()
    return Path(os.path.realpath(root))


@pytest.mark.parametrize("text", CORPUS, ids=lambda t: repr(t[:20]))
def test_corpus_paths_are_real_files_inside_the_whisper_dir(whisper_dir: Path, text: str) -> None:
    """Each hostile corpus name either is rejected or becomes a file the OS creates inside the Whisper dir."""
    for path in results(text):
        assert_contained(whisper_dir, path)
        file = Path(tree_file(whisper_dir, path))
        file.parent.mkdir(parents=True, exist_ok=True)
        file.touch()
        assert file.exists()


def random_text(rng: random.Random) -> str:
    """A random string biased towards the characters that break paths."""
    pools = [
        lambda: rng.choice("./\\ \t\n\x00*?[]{};~%_-"),
        lambda: chr(rng.randrange(0x20, 0x7F)),
        lambda: chr(rng.randrange(0, 0x10000)),
        lambda: chr(rng.randrange(0x10000, 0x110000)),
        lambda: chr(rng.randrange(0xFF00, 0xFFF0)),  # fullwidth forms
        lambda: chr(rng.randrange(0x300, 0x370)),  # combining marks
        lambda: chr(rng.randrange(0x2000, 0x2070)),  # spaces, bidi marks, separators
    ]
    return "".join(rng.choice(pools)() for _ in range(rng.choice([0, 1, 2, 5, 20, 60, 300])))


def test_random_names_never_escape_the_whisper_dir(whisper_dir: Path) -> None:
    """2000 seeded random strings: every result is a contained path that clean_path leaves unchanged."""
    rng = random.Random(20240601)
    made = 0
    for _ in range(2000):
        text = random_text(rng)
        for path in results(text):
            made += 1
            assert_contained(whisper_dir, path)
            assert clean_path(path) == path
    assert made > 2000


def doc_examples() -> list[tuple[str, str, str]]:
    """The rows of the examples table in docs/naming.rst: (input, clean_path result, component result)."""
    text = (ROOT / "docs" / "naming.rst").read_text(encoding="utf-8")
    block = text.split(".. examples-start", 1)[1].split(".. examples-end", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    border = lines[0]
    columns = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    rows = [line for line in lines[1:] if line != border][1:]  # the header row first
    out = []
    for row in rows:
        given, cleaned, single = (row[start:end].strip().strip("`") for start, end in columns)
        out.append((ast.literal_eval(given), cleaned, single))
    return out


def test_docs_examples_table_is_what_the_code_does() -> None:
    """Every row of the examples table in docs/naming.rst holds for clean_path and component."""
    examples = doc_examples()
    assert len(examples) >= 10
    for given, cleaned, single in examples:
        for function, expected in ((clean_path, cleaned), (component, single)):
            if expected == "rejected":
                with pytest.raises(BadName):
                    function(given)
            else:
                assert function(given) == expected, (function.__name__, given)


def test_component_replaces_every_unsafe_character() -> None:
    """component() keeps letters, digits and _-:+=@%#~; anything else, control characters too, becomes _."""
    assert component("eth0") == "eth0"
    assert component("web-1:8080+x=y@z%#~") == "web-1:8080+x=y@z%#~"
    assert component("web1.example.com") == "web1_example_com"
    assert component("../") == "___"
    assert component("a/b\\c d*?[]{}") == "a_b_c_d______"
    assert component("a\x00b\nc") == "a_b_c"
    assert component("h\u00f4te") == "h\u00f4te"
    assert component("\uff43\uff50\uff55") == "cpu"


def test_component_rejects_empty_and_over_long_names() -> None:
    """component() raises BadName for an empty name and one over 200 UTF-8 bytes, and keeps an all-_ name."""
    with pytest.raises(BadName, match="empty") as empty:
        component("")
    assert empty.value.reason == "bad_name"
    assert component("\u00e9" * 100) == "\u00e9" * 100  # 200 bytes
    with pytest.raises(BadName, match="201 bytes"):
        component("\u00e9" * 100 + "x")
    with pytest.raises(BadName, match="over 200"):
        component("\ufdfa" * 12)  # 12 characters, 396 bytes once normalised
    assert component("..") == "__"


def test_metric_path_builds_the_tree() -> None:
    """metric_path() joins prefix, where, step and the dotted metric, each part a safe component."""
    assert metric_path("dsat", "web1.example.com", "cpu", "core0.user") == "dsat.web1_example_com.cpu.core0.user"
    assert metric_path("dsat", "web1", "network", "eth0 (uplink).bytes_sent") == (
        "dsat.web1.network.eth0__uplink_.bytes_sent"
    )


@pytest.mark.parametrize("metric", ["", "a..b", ".a", "a.", "../x"])
def test_metric_path_rejects_empty_metric_components(metric: str) -> None:
    """A metric with an empty dot-separated part is a bug in its builder: BadName, not a collapsed path."""
    with pytest.raises(BadName, match="empty component"):
        metric_path("dsat", "web1", "cpu", metric)


def test_metric_path_rejects_over_long_paths() -> None:
    """A metric path over 1024 characters is rejected even when each component is short enough."""
    assert len(metric_path("dsat", "h", "s", ".".join(["x" * 100] * 9))) <= MAX_PATH_CHARS
    with pytest.raises(BadName, match="over 1024"):
        metric_path("dsat", "h", "s", ".".join(["x" * 100] * 11))


def test_clean_path_drops_empty_components() -> None:
    """clean_path() collapses a..b, .a and a. and makes each remaining component safe."""
    assert clean_path("a..b") == "a.b"
    assert clean_path(".a") == "a"
    assert clean_path("a.") == "a"
    assert clean_path("servers.web 1.cpu") == "servers.web_1.cpu"
    assert clean_path("../../etc/passwd") == "_._etc_passwd"


def test_clean_path_reports_the_control_character_first() -> None:
    """A control character is named with its code point and offset, even in a path also too long."""
    with pytest.raises(BadName, match=r"control character U\+0000 at offset 5") as caught:
        clean_path("dsat.\x00x")
    assert caught.value.reason == "bad_name"
    with pytest.raises(BadName, match=r"control character U\+001B at offset 2000"):
        clean_path("x" * 2000 + "\x1b")
    with pytest.raises(BadName, match=r"U\+0085 at offset 1"):
        clean_path("a\x85")


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty path"),
        (".", "no path components"),
        ("...", "no path components"),
        ("x" * (MAX_PATH_CHARS + 1), "1025 characters, over 1024"),
        ("a." + "x" * (MAX_COMPONENT_BYTES + 1), "201 bytes, over 200"),
        ("a." + "\u00e9" * 101, "202 bytes, over 200"),
        ("\ufdfa." * 60, "1139 characters once normalised, over 1024"),
    ],
)
def test_clean_path_rejections_say_why(path: str, why: str) -> None:
    """clean_path() rejects empty, component-less, too long paths and over-long components, saying which."""
    with pytest.raises(BadName, match=why) as caught:
        clean_path(path)
    assert caught.value.reason == "bad_name"


def test_clean_path_accepts_limits_exactly() -> None:
    """A path of exactly 1024 characters with components of exactly 200 bytes is kept as it is."""
    path = ".".join(["x" * 200] * 5) + "." + "y" * 19
    assert len(path) == MAX_PATH_CHARS
    assert clean_path(path) == path


def counting_clean_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace naming.clean_path with a wrapper recording each path it is called with."""
    calls: list[str] = []
    real = naming.clean_path

    def counting(path: str) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(naming, "clean_path", counting)
    return calls


def test_the_path_cache_caches_results_and_rejections(monkeypatch: pytest.MonkeyPatch) -> None:
    """PathCache cleans each path once; a cached rejection raises a fresh BadName with the same message."""
    calls = counting_clean_path(monkeypatch)
    cache = PathCache()
    assert cache.clean("a..b c") == "a.b_c"
    assert cache.clean("a..b c") == "a.b_c"
    errors = []
    for _ in range(2):
        with pytest.raises(BadName, match="U\\+0000") as caught:
            cache.clean("a\x00b")
        errors.append(caught.value)
    assert calls.count("a..b c") == 1  # a rejection is cleaned again to find its reason, an accepted path never
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])
    assert errors[1].reason == "bad_name"


def test_the_path_cache_keeps_results_and_stays_bounded() -> None:
    """Raw paths (str or bytes) map to clean ones ("" for rejected); long keys are not kept; the budget holds."""
    budget = 2 * 2 * entry_bytes(b"a/b")  # two such paths per generation
    cache = PathCache(max_bytes=budget)
    assert cache.clean_many([b"a/b", b"\x00"]) == ["a_b", ""]
    assert len(cache) == 2
    assert cache.clean(b"c") == "c" and len(cache) == 3
    assert cache.clean("d") == "d" and cache.clean(b"e") == "e" and len(cache) == 3
    assert cache._cache.nbytes <= budget
    with pytest.raises(BadName, match="over 1024"):
        cache.clean("x" * 5000)
    assert cache.clean_many([b"x" * 2000]) == [""] and len(cache) == 3


@pytest.mark.parametrize(
    "paths",
    [[""], ["", ""], ["a", ""], ["", "a"], [".a"], ["a."], ["a..b"], ["a\nb"], ["a", "b\n"], ["a b"], ["é"]]
    + [["x" * 201]],
)
def test_a_batch_with_an_empty_component_or_a_stray_byte_is_not_already_safe(paths: list[str]) -> None:
    """The edges of the scans: empty paths and components, newlines inside a path, a component too long."""
    assert not naming.all_safe(paths)
    assert naming.decode_safe([path.encode() for path in paths]) is None


# -- tagged series -------------------------------------------------------------

VALID_TAGGED = [
    "disk.used;datacenter=dc1;server=web01",
    "disk.used;server=web01;datacenter=dc1",
    "a;b=1;a=2",
    "a;a-b=1;a=2",  # carbon sorts ";a-b=1" before ";a=2": the strings, not the keys
    "a;k=1;k=2",  # the last one wins
    "a;name=other;k=v",  # the name tag is the name
    "a;name=other",
    "~~a.b;k=v",  # the name loses its leading ~
    "a;k=v=w",  # a value may hold "="
    "a;k=v~",
    "a;k=../../etc/passwd",  # a value may hold dots and slashes: it never becomes a path (see below)
    "a;k=/",
    "a;k=x.y;j=\u00e9\u00e8",
    "a.b;k=v.w",
    'cpu{host="web01",dc="eu"}',
    'cpu{host="web\\"01",dc="e\\\\u"}',  # escaped quote and backslash
    'cpu{host="a":,dc="b"}',  # carbon's separator pattern also takes ":,"
    "a;k=\U0001f525",
]

INVALID_TAGGED = [
    "a;k",
    "a;=v",
    "a;k=",
    "a;k=~v",
    "a;k!=v",
    "a;k^=v",
    "a;k=v;",
    "a;;k=v",
    ";k=v",
    "~;k=v",
    'cpu{host=a"}',
    '{host="a"}',
    'cpu{host="a",}x"}',
    'cpu{a{host="a"}',
]


def carbon_canonical(path: str) -> str:
    """What carbon's TaggedSeries makes of *path*, with its name part made safe as DSAT makes any path."""
    series = TaggedSeries.parse(path)
    # A ";" in an OpenMetrics name is one more character the path cleaner turns into "_"; carbon's
    # "no leading ~" holds for the name once safe (".~a" is "~a" once safe, so "a").
    name = clean_path(series.tags["name"].replace(";", "_")).lstrip("~")
    return TaggedSeries.format({**series.tags, "name": name})


@pytest.mark.parametrize("path", VALID_TAGGED, ids=repr)
def test_valid_tagged_paths_get_carbons_canonical_form(path: str) -> None:
    """A tagged path carbon accepts comes out as carbon's TaggedSeries.parse(path).path, and stays so."""
    assert clean_path(path) == TaggedSeries.parse(path).path == carbon_canonical(path)
    assert clean_path(clean_path(path)) == clean_path(path)


@pytest.mark.parametrize("path", INVALID_TAGGED, ids=repr)
def test_tagged_paths_carbon_refuses_are_refused(path: str) -> None:
    """A tagged path carbon's TaggedSeries cannot parse is refused as bad_tag or bad_name, never mangled."""
    with pytest.raises(Exception):  # noqa: B017 (carbon raises a bare Exception)
        TaggedSeries.parse(path)
    with pytest.raises(BadName) as caught:
        clean_path(path)
    assert caught.value.reason in ("bad_tag", "bad_name")


def test_the_name_part_is_made_safe_and_tag_values_are_not() -> None:
    """The name of a tagged series is cleaned like any path; its tag values keep every character carbon allows."""
    assert clean_path("a b/../c;path=/var/log;ver=1..2") == "a_b_._c;path=/var/log;ver=1..2"
    assert clean_path("\uff43\uff50\uff55;k=\uff43") == "cpu;k=\uff43"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("a;k=x y", "whitespace"),
        ("a;k=x\u2003y", "whitespace"),
        ("a;k y=x", "whitespace"),
        ('a;z={"};b=1', "would read"),
        ("a;k=" + "v" * 2000, "over 1024"),
        ("a;" + ";".join(f"k{i}=v" for i in range(3000)), "over 1024"),
    ],
)
def test_dsat_refuses_tags_carbon_would_take_but_cannot_keep(path: str, why: str) -> None:
    """Whitespace (carbon's line protocol splits on it), a form carbon reads back otherwise, over-long: refused."""
    TaggedSeries.parse(path)  # carbon itself parses it
    with pytest.raises(BadName, match=why):
        clean_path(path)


def _tagged_corpus(rng: random.Random) -> str:
    """A tagged path, usual or not: keys twice, a name tag, odd characters in names, keys and values."""
    names = ["a.b", "servers.h1.cpu", "~a.b", "a..b", "a b", "é", "x" * 201, "", "a~", "a.~b"]
    keys = ["dc", "env", "name", "a-b", "a", "k.x", "k:y", "", "k!", "k^", "k~", "é", "k y", "K"]
    values = ["dc1", "prod", "~x", "x~", "a=b", "", "v.w", "v y", "é", "1", "@%#", "v\x00"]
    tags = [f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.1:
        tags.append(rng.choice(["k", "=v", "k=v;", ""]))
    return rng.choice(names) + "".join(";" + tag for tag in tags)


@pytest.mark.parametrize("seed", range(40))
def test_the_usual_tagged_path_gets_what_reading_it_tag_by_tag_gives(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shortcut for usual tagged paths and tagged_path agree: the same canonical form, or the same refusal."""
    rng = random.Random(seed)
    paths = [_tagged_corpus(rng) for _ in range(200)]
    fast = [_outcome(path) for path in paths]
    monkeypatch.setattr(naming, "_simple_tagged", lambda path: None)
    assert [_outcome(path) for path in paths] == fast
    assert any(naming._SIMPLE_TAGGED.fullmatch(path) for path in paths)  # the shortcut was taken


def _outcome(path: str) -> str:
    try:
        return clean_path(path)
    except BadName as exc:
        return f"refused: {exc.reason}"


def test_metric_path_keeps_a_collectors_tags() -> None:
    """metric_path() puts the tags of a tagged metric after the tree, sorted and checked."""
    assert metric_path("dsat", "web1.x", "app", "lat.p99;region=eu;az=b") == "dsat.web1_x.app.lat.p99;az=b;region=eu"
    with pytest.raises(BadName) as caught:
        metric_path("dsat", "web1", "app", "lat;region=~eu")
    assert caught.value.reason == "bad_tag"


def random_tagged(rng: random.Random) -> str:
    """A random tagged path in either of carbon's forms, biased towards the characters its rules are about."""
    hostile = 'ab.;=~!^/ {}"\\,:\u00e9\U0001f525'

    def chunk() -> str:
        alphabet = hostile if rng.random() < 0.3 else "abc.-_"
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 2, 4, 8])))

    name = rng.choice(["m", "a.b", "", "~x", chunk()])
    if rng.random() < 0.2:
        return name + "{" + ",".join(f'{chunk() or "k"}="{chunk()}"' for _ in range(rng.randrange(4))) + "}"
    tags = [f"{chunk() or 'k'}={chunk()}" if rng.random() < 0.9 else chunk() for _ in range(rng.randrange(1, 6))]
    return ";".join([name, *tags])


def test_random_tagged_paths_agree_with_carbon() -> None:
    """5000 seeded random tagged paths: carbon's canonical form, or refused by carbon's rules or DSAT's extra ones."""
    rng = random.Random(11)
    kept = refused = 0
    extra_rules = re.compile("whitespace|would read|over 1024|no path components")
    for _ in range(5000):
        path = random_tagged(rng)
        if not naming.is_tagged(path):
            continue
        try:
            expected: str | None = carbon_canonical(path)
        except Exception:  # noqa: BLE001 (carbon raises a bare Exception)
            expected = None
        try:
            got = clean_path(path)
        except BadName as exc:
            refused += 1
            assert expected is None or extra_rules.search(str(exc)), (path, exc)
            continue
        kept += 1
        assert got == expected, path
        assert clean_path(got) == got
    assert kept > 500 and refused > 500


# -- whole batches -----------------------------------------------------------------


def _batch_corpus(seed: int) -> list[str]:
    """Paths of every kind: safe ASCII at the length limits, unsafe, hostile, non-ASCII, tagged."""
    rng = random.Random(seed)
    safe = ["a.b", "servers.host01.cpu.user", "x" * 200, ".".join(["y" * 200] * 5) + "." + "z" * 19, "~a:b=c@d%e#f+g-h"]
    unsafe = ["a..b", ".a", "a.", "x" * 201, "a" * 1025, "a b", "a/b", "../etc", "é.ü", "a\x00b", "a\nb", "", "t;k=v"]
    unsafe += ["t.x;k=~v", "a{b}", "a*b", "\u2003", "n;b=1;a=2", 'n{k="v"}']
    alphabet = "ab.;=~\n\x00/ é"
    return [
        rng.choice(safe) if rng.random() < 0.7 else rng.choice(unsafe + ["".join(rng.choices(alphabet, k=8))])
        for _ in range(rng.randint(1, 40))
    ]


def _clean_or_none(path: str) -> str | None:
    try:
        return clean_path(path)
    except BadName:
        return None


@pytest.mark.parametrize("seed", range(300))
@pytest.mark.parametrize("short", [False, True], ids=["any", "short"])
def test_a_batch_passes_as_already_safe_only_when_every_path_is_kept_as_it_is(seed: int, short: bool) -> None:
    """all_safe and decode_safe say yes only when clean_path keeps every path, and always for safe ASCII ones.

    *short*: no path longer than a component may be, the batches the scans
    check without the regex.
    """
    paths = _batch_corpus(seed)
    if short:
        paths = [path for path in paths if len(path.encode()) <= naming.MAX_COMPONENT_BYTES] or ["a"]
    unchanged = all(_clean_or_none(path) == path for path in paths)
    ascii_safe = all(path.isascii() and not naming.is_tagged(path) and _clean_or_none(path) == path for path in paths)
    raw = [path.encode("utf-8") for path in paths]
    for verdict in (naming.all_safe(paths), naming.decode_safe(raw) == paths):
        assert not verdict or unchanged
        assert verdict or not ascii_safe
    assert naming.decode_safe(raw) in (None, paths)


@pytest.mark.parametrize(
    ("metric", "method"),
    [
        ("dsat.web01.self.orchester.points_in", "sum"),
        ("dsat.web01.self.orchester.rejected.bad_timestamp", "sum"),
        ("dsat.web01.self.tracker.rejected.bad_frame", "sum"),
        ("dsat.web01.self.orchester.ha.failovers", "sum"),
        ("dsat.web01.self.orchester.ha.active", "max"),
        ("dsat.web01.self.orchester.w1.shard.kept", "sum"),
        ("dsat.web01.self.orchester.spool_disk_refused", "sum"),
        ("dsat.web01.self.steps.orchester.spool_disk_full", "sum"),
        ("dsat.web01.self.steps.cpu.timer_failures", "sum"),
        ("dsat.web01.self.steps.cpu.window_expired", "sum"),
        ("dsat.web01.self.orchester.queue_depth", "max"),
        ("dsat.web01.self.cpu.in_flight", "max"),
        ("stats.timers.api.upper", "max"),
        ("servers.web01.cpu.total.user", "average"),
    ],
)
def test_storage_aggregation_sums_counts_and_keeps_worst_levels(metric: str, method: str) -> None:
    """carbon_conf/storage-aggregation.conf: the first section whose pattern matches decides, as in carbon."""
    conf = configparser.ConfigParser()
    conf.read(Path(__file__).parent.parent / "carbon_conf" / "storage-aggregation.conf")
    first = next(conf[s] for s in conf.sections() if re.search(conf[s]["pattern"], metric))
    assert first["aggregationMethod"] == method
