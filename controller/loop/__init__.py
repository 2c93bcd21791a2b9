"""The control loop and what it acts through: one look (assess), measurement, operator actions, leader
election, webhooks.

May import ``controller.core``, ``controller.config``, ``controller.clock``, ``controller.encoding`` and
``storage``; never Flask, ``router`` or the
HTTP, report or CLI packages.
"""
