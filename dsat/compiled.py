"""The compiled hot path, ``dsat._speedups``, or None: per-line steps of the orchester in C, when they were built.

``setup.py`` builds the extension when the machine has a C compiler
(``optional=True``: without one, DSAT installs and runs in pure Python).
Each compiled function gives exactly what the pure-Python version beside its
caller gives (``tests/test_speedups.py``), and answers None for a batch it
does not handle, for the Python version to take.  Setting
:data:`PURE_PYTHON_ENV` (to anything but an empty string) leaves it unused, to
compare the two or rule it out.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

#: The environment variable that keeps DSAT in pure Python even where the extension is built.
PURE_PYTHON_ENV = "DSAT_PURE_PYTHON"


def _load() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV):
        return None
    try:
        return importlib.import_module("dsat._speedups")
    except ImportError:
        return None


#: ``dsat._speedups``, or None when it was not built or :data:`PURE_PYTHON_ENV` is set.
speedups: ModuleType | None = _load()


def describe() -> str:
    """How the hot path runs in this process, for the orchester's log at start."""
    if speedups is not None:
        return "compiled (dsat._speedups)"
    if os.environ.get(PURE_PYTHON_ENV):
        return f"pure Python ({PURE_PYTHON_ENV} is set)"
    return "pure Python (dsat._speedups is not there: it is built only where the install found a C compiler)"
