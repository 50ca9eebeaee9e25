"""dsat.naming: safe components, metric paths, cleaned outside paths, the Whisper containment guarantee."""

from __future__ import annotations

import ast
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from dsat import naming
from dsat.errors import BadName
from dsat.naming import MAX_COMPONENT_BYTES, MAX_PATH_CHARS, PathCleaner, clean_path, component, metric_path
from tests.conftest import ROOT

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
    "%2e%2e%2fetc",
    "~root",
    "-",
    "_",
    "\ud800x",  # lone surrogate, as surrogateescape decoding leaves
    "servers.web1.cpu",
]


def tree_file(root: Path, path: str) -> str:
    """Where carbon writes *path* under *root*: dots become directories, plus ``.wsp``."""
    return os.path.realpath(os.path.join(root, path.replace(".", "/") + ".wsp"))


def assert_contained(root: Path, path: str) -> None:
    """*path* names a file strictly inside *root*, one directory level per component, each a legal name."""
    parts = path.split(".")
    assert all(parts), path
    for part in parts:
        assert all(ch.isalnum() or ch in SAFE_PUNCTUATION for ch in part), part
        assert len(part.encode("utf-8")) <= MAX_COMPONENT_BYTES
    assert len(path) <= MAX_PATH_CHARS
    real = tree_file(root, path)
    assert real.startswith(str(root) + os.sep)
    assert Path(real).relative_to(root).parts == (*parts[:-1], parts[-1] + ".wsp")


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
            assert exc.reason == "bad_name"
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


def test_path_cleaner_caches_results_and_rejections(monkeypatch: pytest.MonkeyPatch) -> None:
    """PathCleaner cleans each path once; a cached rejection raises a fresh BadName with the same message."""
    calls = counting_clean_path(monkeypatch)
    cleaner = PathCleaner()
    assert cleaner("a..b c") == "a.b_c"
    assert cleaner("a..b c") == "a.b_c"
    errors = []
    for _ in range(2):
        with pytest.raises(BadName, match="U\\+0000") as caught:
            cleaner("a\x00b")
        errors.append(caught.value)
    assert calls == ["a..b c", "a\x00b"]
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])
    assert errors[1].reason == "bad_name"


def test_path_cleaner_is_bounded() -> None:
    """A full cache is emptied before the next new path; paths over 1024 characters are never kept."""
    cleaner = PathCleaner(max_size=3)
    for path in ("a", "b", "c"):
        cleaner(path)
    assert len(cleaner) == 3
    cleaner("d")
    assert len(cleaner) == 1
    with pytest.raises(BadName, match="over 1024"):
        cleaner("x" * 5000)
    assert len(cleaner) == 1
