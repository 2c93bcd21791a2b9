"""Hostile .skops artifacts: each names a callable or type that runs code or reaches the system.

    paths = hostile.save_corpus(tmp_path)     # {case name: path of a .skops file}

Every file is a real skops dump (skops writes any function as module + name, so an attacker needs no
hand editing); some wrap a fitted classifier so that, once loaded, registration with a golden set or
the first scored request would call the payload. The previous trust rule (any `builtins.`,
`numpy.`, `pandas.`, `collections.` ... name) admitted most of them.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import operator
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer


def _wrapped(payload: FunctionTransformer) -> Pipeline:
    """A fitted churn classifier with the payload as its first step."""
    import mlpipes

    model = mlpipes.classifier()
    return Pipeline([("payload", payload), *model.steps])


def corpus() -> dict[str, Any]:
    """Return {case: object whose skops dump names a dangerous callable or type}."""
    return {
        "builtins.exec": _wrapped(FunctionTransformer(func=builtins.exec)),
        "builtins.eval": _wrapped(FunctionTransformer(func=builtins.eval)),
        "builtins.getattr chain": _wrapped(
            FunctionTransformer(func=builtins.getattr, kw_args={"name": "__globals__"})
        ),
        "builtins.__import__": FunctionTransformer(func=builtins.__import__),
        "builtins.compile": FunctionTransformer(func=builtins.compile),
        "builtins.open": FunctionTransformer(func=builtins.open),
        "issue 17 chain: full_like, ravel, max, exec": Pipeline(
            [
                ("fill", FunctionTransformer(np.full_like, kw_args={"fill_value": 1})),
                ("flat", FunctionTransformer(np.ravel)),
                ("pick", FunctionTransformer(builtins.max)),
                ("run", FunctionTransformer(builtins.exec)),
            ]
        ),
        "os.system": _wrapped(FunctionTransformer(func=os.system)),
        "os.popen": FunctionTransformer(func=os.popen),
        "subprocess.check_output": FunctionTransformer(func=subprocess.check_output),
        "subprocess.Popen type": FunctionTransformer(func=subprocess.Popen),
        "importlib.import_module": FunctionTransformer(func=importlib.import_module),
        "operator.attrgetter trick": _wrapped(
            FunctionTransformer(func=operator.attrgetter("__class__.__init__.__globals__"))
        ),
        "operator.methodcaller trick": FunctionTransformer(func=operator.methodcaller("__reduce__")),
        "functools.partial of os.system": FunctionTransformer(func=functools.partial(os.system, "id")),
        "numpy.load with pickles": FunctionTransformer(func=np.load, kw_args={"allow_pickle": True}),
        "pandas.eval": FunctionTransformer(func=pd.eval),
        "pandas.read_pickle": FunctionTransformer(func=pd.read_pickle),
    }


def save_corpus(directory: str | Path) -> dict[str, Path]:
    """Dump every hostile case with skops under directory; return {case: path}."""
    import skops.io as sio

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for number, (name, obj) in enumerate(corpus().items()):
        path = folder / f"hostile-{number:02d}.skops"
        sio.dump(obj, path)
        paths[name] = path
    return paths
