"""The documentation builds without a warning: every page in the toctree, every reference resolves
(Sphinx nitpicky), the API reference generated from the docstrings."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration  # runs sphinx-build, seconds


def test_sphinx_builds_the_docs_with_warnings_as_errors(tmp_path: Path) -> None:
    """`sphinx-build -W` on docs/ succeeds (README.rst included as the front page)."""
    out = sphinx(ROOT / "docs", tmp_path / "html")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "html" / "reliability.html").exists()


def sphinx(docs: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(docs), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_reference_to_a_renamed_class_breaks_the_docs_build(tmp_path: Path) -> None:
    """A copy of the docs whose page names a class that does not exist (as after a rename) fails to build,
    naming the reference; the API reference has the class it should have named."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("_build"))
    for page in ("README.rst", "CHANGELOG.rst"):
        shutil.copy(ROOT / page, tmp_path / page)
    page = tmp_path / "docs" / "wire.rst"
    page.write_text(page.read_text() + "\nSee :class:`dsat.envelope.Envelop`.\n")
    out = sphinx(tmp_path / "docs", tmp_path / "html")
    assert out.returncode != 0
    assert "py:class reference target not found: dsat.envelope.Envelop" in out.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    assert 'id="dsat.envelope.Envelope"' in api
