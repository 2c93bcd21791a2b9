"""Pipeline artifacts on disk: content-addressed copies, SHA-256 verified at every load.

skops is the default format: loading it does not execute arbitrary code, and types it does not know
are refused unless listed as trusted. The trust list is exact names, never module prefixes: skops'
own defaults (scikit-learn estimators, NumPy/SciPy ufuncs, NumPy dtypes, plain containers), the
EXTRA_TRUSTED_TYPES a fitted pipeline commonly holds, and the names the operator trusted for one
version (`--trust mymodule.add_ratios`, stored with the version). Names in FORBIDDEN_MODULES (builtins,
os, subprocess, importlib, operator, ...) can never be trusted. joblib/pickle is accepted only with an
explicit opt-in.
"""

from __future__ import annotations

import hashlib
import importlib
import platform
import re
import shutil
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from storage.errors import StorageError

FORMATS = ("skops", "joblib")


class ArtifactError(StorageError, ValueError):
    """An artifact is missing, tampered with, in a refused format, or not loadable."""


FINGERPRINT_PACKAGES = ("numpy", "scipy", "scikit-learn", "pandas", "skops")


def environment_fingerprint() -> dict[str, str]:
    """Describe the Python environment that loads and scores pipelines (Python, libraries, platform).

    Recorded at registration (the research side) and by every router (the serving side), so the
    two can be compared: a library version that changes outputs is a reproducibility risk.
    """
    packages = {}
    for name in FINGERPRINT_PACKAGES:
        try:
            packages[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            packages[name] = "absent"
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": f"{platform.system()}-{platform.machine()}",
        **packages,
    }


def sha256_of(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detect_format(path: str | Path) -> str:
    """Return an artifact's format from its file name: ``skops`` or ``joblib``; ArtifactError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix == ".skops":
        return "skops"
    if suffix in (".joblib", ".pkl", ".pickle"):
        return "joblib"
    raise ArtifactError(
        f"cannot tell the format of {Path(path).name!r}: use a .skops (or, opted in, .joblib) file"
    )


def store_artifact(source: str | Path, artifact_dir: str | Path) -> tuple[Path, str]:
    """Copy an artifact into the content-addressed store; return (stored path, sha256)."""
    source = Path(source)
    if not source.is_file():
        raise ArtifactError(f"artifact file not found: {source}")
    digest = sha256_of(source)
    target_dir = Path(artifact_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{digest}{source.suffix.lower()}"
    if not target.exists():
        tmp = target.with_suffix(target.suffix + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    return target.resolve(), digest


def load_artifact(
    path: str | Path,
    *,
    sha256: str,
    fmt: str,
    trust_pickle: bool = False,
    trusted: tuple[str, ...] | list[str] = (),
) -> Any:
    """Load a fitted pipeline after checking its SHA-256; refuse pickles without the opt-in.

    A skops file may name only the types skops trusts by default, EXTRA_TRUSTED_TYPES and `trusted`
    (exact names, checked by check_trusted_names); any other type or function is refused unloaded.
    """
    path = Path(path)
    if not path.is_file():  # the name only: this message reaches anonymous clients and /readyz
        raise ArtifactError(f"artifact file not found: {path.name}")
    actual = sha256_of(path)
    if actual != sha256:
        raise ArtifactError(
            f"artifact {path.name} was changed after registration: sha256 is {actual[:12]}…, "
            f"registered {sha256[:12]}…; nothing will be served from it"
        )
    if fmt == "skops":
        from storage.skops_trust import import_skops

        sio = import_skops()  # skops' own trust lists, without its import-time scan when pinned

        allowed = EXTRA_TRUSTED_TYPES | set(check_trusted_names(trusted, resolve=False))
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as error:  # skops raises many types for malformed files
            raise ArtifactError(f"cannot load skops artifact {path.name}: {error}") from error
        refused = [t for t in untrusted if t not in allowed]
        if refused:
            raise ArtifactError(
                f"the skops file {path.name} names types that are not trusted: {', '.join(refused[:10])}"
                f"{' …' if len(refused) > 10 else ''}; if they are yours and safe, register with "
                "--trust MODULE.NAME for each"
            )
        try:
            return sio.load(path, trusted=untrusted)
        except Exception as error:  # skops raises many types for malformed files
            raise ArtifactError(f"cannot load skops artifact {path.name}: {error}") from error
    if fmt == "joblib":
        if not trust_pickle:
            raise ArtifactError(
                f"{path.name} is a pickle/joblib file, which can run arbitrary code when loaded; "
                "use skops, or pass --trust-pickle if you trust its origin"
            )
        import joblib

        try:
            return joblib.load(path)
        except Exception as error:
            raise ArtifactError(f"cannot load joblib artifact {path.name}: {error}") from error
    raise ArtifactError(f"unknown artifact format {fmt!r}; expected one of {', '.join(FORMATS)}")


# Exact names outside skops' default trust list that fitted scikit-learn pipelines commonly hold (found
# by saving every scikit-learn estimator with skops). HistGradientBoosting's TreePredictor is here
# although skops leaves it out: it runs no code, but a crafted one can crash a worker at predict time
# (out-of-bounds node indices); HistGradientBoosting is too common to refuse, and only an operator
# token can register an artifact.
EXTRA_TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "numpy.dtype",
        "numpy.mean",
        "numpy.median",
        "numpy.nanmean",
        "numpy.nanmedian",
        "numpy.clip",
        "scipy.interpolate._bsplines.BSpline",
        "sklearn.tree._tree.Tree",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.metrics._dist_metrics.ManhattanDistance64",
        "sklearn.metrics._dist_metrics.MinkowskiDistance64",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn._loss.loss.HalfTweedieLossIdentity",
        "sklearn.gaussian_process.kernels.ConstantKernel",
        "sklearn.gaussian_process.kernels.Product",
        "sklearn.gaussian_process.kernels.Sum",
        "sklearn.gaussian_process.kernels.RBF",
        "sklearn.gaussian_process.kernels.WhiteKernel",
        "sklearn.feature_selection._univariate_selection.f_classif",
        "sklearn.feature_selection._univariate_selection.f_regression",
        "sklearn.feature_selection._univariate_selection.chi2",
        "sklearn.feature_selection._mutual_info.mutual_info_classif",
        "sklearn.feature_selection._mutual_info.mutual_info_regression",
    }
)

# Modules whose names can run code, reach the system or rebuild arbitrary callables: never trusted,
# whatever an operator passes.
FORBIDDEN_MODULES: frozenset[str] = frozenset(
    {
        "__main__", "builtins", "os", "posix", "nt", "sys", "subprocess", "importlib", "operator",
        "functools", "pickle", "_pickle", "marshal", "shutil", "socket", "ctypes", "runpy", "code",
        "codeop", "pty", "types", "inspect", "gc", "io", "_io", "pathlib", "tempfile", "multiprocessing",
        "threading", "_thread", "signal", "webbrowser", "urllib", "http", "asyncio", "pdb", "bdb",
        "dill", "cloudpickle", "joblib", "skops", "copyreg", "site", "sysconfig", "pkgutil", "zipimport",
        "platform", "resource", "select", "selectors", "ssl", "smtplib", "ftplib", "telnetlib",
        "xmlrpc", "sqlite3", "shelve", "dbm", "glob", "fnmatch", "tarfile", "zipfile", "logging",
        "contextlib", "weakref", "abc", "ast", "dis", "timeit", "trace", "traceback", "atexit",
        "numpy.lib", "numpy.f2py", "numpy.distutils", "numpy.testing", "numpy.ctypeslib", "pandas.io",
        "scipy.io", "scipy.weave", "sklearn.datasets", "sklearn.externals", "sklearn.utils._testing",
    }
)  # fmt: skip
# A name whose last part contains one of these is refused too (numpy.load, pandas.read_pickle, ...).
_DANGEROUS_NAMES = re.compile(
    r"eval|exec|compile|import|getattr|setattr|delattr|open|globals|locals|vars|input|breakpoint|"
    r"system|popen|spawn|fork|kill|load|pickle|marshal|attrgetter|methodcaller|itemgetter|__",
    re.IGNORECASE,
)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
MAX_TRUSTED_TYPES = 50


def check_trusted_names(names: tuple[str, ...] | list[str], *, resolve: bool = True) -> tuple[str, ...]:
    """Return the names an operator asked to trust, or raise ArtifactError naming the first refused one.

    Each must be one exact dotted name (`mymodule.add_ratios`, no prefix or wildcard) outside
    FORBIDDEN_MODULES and not a known code-running callable. With resolve (at registration), the
    module must import here and hold the name, and the object it names must not come from a
    forbidden module either (`mymodule.system` that is really `os.system` is refused).
    """
    if len(names) > MAX_TRUSTED_TYPES:
        raise ArtifactError(f"{len(names)} trusted types; trust at most {MAX_TRUSTED_TYPES}")
    checked: list[str] = []
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ArtifactError(
                f"cannot trust {name!r}: give one exact dotted name such as mymodule.add_ratios "
                "(no wildcards, prefixes or spaces)"
            )
        parts = name.split(".")
        if _forbidden_module(name.rsplit(".", 1)[0]) or _DANGEROUS_NAMES.search(parts[-1]):
            raise ArtifactError(f"cannot trust {name}: it can run arbitrary code or reach the system")
        if resolve:
            _resolve_trusted(name)
        if name not in checked:
            checked.append(name)
    return tuple(checked)


def _forbidden_module(module: str) -> bool:
    parts = module.split(".")
    return any(".".join(parts[: i + 1]) in FORBIDDEN_MODULES for i in range(len(parts))) or any(
        p.startswith("__") for p in parts
    )


def _resolve_trusted(name: str) -> None:
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a module may fail to import in any way
        raise ArtifactError(
            f"cannot trust {name}: module {module_name} does not import here ({type(error).__name__}: "
            f"{error}); put it on PYTHONPATH of every process that registers or serves this version"
        ) from error
    if not hasattr(module, attr):
        raise ArtifactError(f"cannot trust {name}: module {module_name} has no attribute {attr}")
    target = getattr(module, attr)
    origin = getattr(target, "__module__", None) or module_name
    if _forbidden_module(str(origin)) or _DANGEROUS_NAMES.search(str(getattr(target, "__name__", attr))):
        raise ArtifactError(f"cannot trust {name}: it is {origin}.{getattr(target, '__name__', attr)}")
