"""Comparison reports: gathering (storage queries), computing (pure), rendering (JSON, HTML, Markdown, SVG).

May import ``controller.core`` and ``storage``; never Flask, ``router``, the loop or the CLI.
"""
