"""Operator tools: the ``dsat`` command line and what it runs beside the pipeline
(the benchmark and its load and sink, the local Graphite stack, the topology picture,
``dsat explain``, ``dsat status``, ``dsat route``).

They use the runtime (``dsat.*``); the runtime never imports them.
"""
