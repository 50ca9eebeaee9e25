"""The documentation builds without a warning: every page in the toctree, every reference resolves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration  # runs sphinx-build, seconds


def test_sphinx_builds_the_docs_with_warnings_as_errors(tmp_path: Path) -> None:
    """`sphinx-build -W` on docs/ succeeds (README.rst included as the front page)."""
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "html" / "reliability.html").exists()
