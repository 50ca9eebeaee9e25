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
# Every cross-reference must resolve (-W turns a broken one into a failed build): a renamed module,
# class or function that a page or a docstring still names breaks the docs build, not the reader.
nitpicky = True
# The API reference (api.rst) is generated from the docstrings; signatures without annotations, so the
# reference does not try to link Twisted's, ZeroMQ's and the standard library's types.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
# A method without a docstring of its own is not documented with Twisted's (epytext, not reST).
autodoc_inherit_docstrings = False
# References outside DSAT (Twisted, ZeroMQ, the standard library, carbon) are not checked: the build
# runs offline, without intersphinx inventories.
nitpick_ignore_regex = [(r"py:.*", r"(twisted|zmq|zlib|faulthandler|sqlite3|carbon)(\..*)?")]
exclude_patterns = ["_build"]
# docs/_static/demo-topology.svg (dsat graph of the demo) is served there; README.rst shows it by that URL.
html_static_path = ["_static"]
html_theme = "alabaster"
