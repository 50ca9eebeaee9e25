"""Sphinx configuration for DSAT's documentation."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsat import __version__  # noqa: E402

project = "DSAT"
author = "DSAT developers"
release = __version__
version = ".".join(__version__.split(".")[:2])
extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
# docs/_static/demo-topology.svg (dsat graph of the demo) is served there; README.rst shows it by that URL.
html_static_path = ["_static"]
html_theme = "alabaster"
