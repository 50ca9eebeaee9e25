"""The optional C extension, dsat._speedups; everything else about the package is in pyproject.toml.

``optional=True``: without a C compiler the package installs without it, and
the callers (through dsat.compiled) use their pure-Python versions of the
same steps.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("dsat._speedups", ["dsat/_speedups.c"], optional=True)])
