"""The pure decision core: statistics, the judge, the policy, the rollout state machine, reproducibility.

May import NumPy, SciPy, pydantic and PyYAML only: no Flask, SQLAlchemy, httpx, ``storage`` or
``router``, and no I/O (no clock, no files, no network). Everything here is a function of its arguments.
"""
