"""The control loop and what it acts through: measurement, operator actions, leader election, webhooks.

May import ``controller.core``, ``controller.config`` and ``storage``; never Flask, ``router`` or the
HTTP, report or CLI packages.
"""
