"""DSAT: Distributed SATellite tools, a metrics pipeline for Graphite."""

__version__ = "0.1.0"
