"""The admin HTTP surface: admin API, bearer-token auth, the feedback endpoint, OpenAPI, the dashboard.

May import Flask, ``controller.loop``, ``controller.core``, ``controller.reports``, ``controller.config``,
``controller.registry`` and ``storage``; never ``router`` or the CLI.
"""
