"""The control plane: what decides, what acts, what is shown to people.

Packages by role, arrows pointing down only (one import-linter ``layers`` contract keeps them):

- ``cli/`` and the composition modules here (``app``, ``server``, ``config``, ``registry``, ``demo``)
  may import everything below;
- ``http/`` (admin API, auth, feedback, OpenAPI, dashboard) and ``reports/`` may import ``loop``,
  ``core`` and ``storage``;
- ``loop/`` (control loop, one look ``assess``, measurement, operator actions, leader election,
  webhooks) may import ``core`` and ``storage``;
- ``config`` (settings), ``clock`` (the injected Clock) and ``encoding`` (the one JSON encoding) sit
  between ``loop`` and ``core``;
- ``core/`` (statistics, judge, policy, state machine, reproducibility) is pure: no Flask, SQLAlchemy,
  HTTP client, storage or router.

See docs/architecture.md for the picture and for where new code goes.
"""
