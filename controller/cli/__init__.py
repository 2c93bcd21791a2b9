"""The ``mlcanary`` command line: one module per command group, shared helpers in ``common``.

Imported one way only: ``main`` imports the group modules, the group modules import ``common``; the
composition root (``controller.app``, ``controller.server``) is imported lazily where start-up time
matters (``mlcanary --help`` stays fast).
"""
