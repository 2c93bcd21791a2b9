"""The admin HTTP surface: admin API, bearer-token auth, the feedback endpoint, OpenAPI, the dashboard,
and the errors every answer is rendered with (``errors``).

May import Flask, ``controller.loop``, ``controller.core``, ``controller.reports``, ``controller.config``,
``controller.registry`` and ``storage``; never ``router`` or the CLI.
"""
