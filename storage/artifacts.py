"""Pipeline artifacts on disk: content-addressed copies, SHA-256 verified at every load.

skops is the default format: loading it does not execute arbitrary code, and types it does not know
are refused unless listed as trusted. joblib/pickle is accepted only with an explicit opt-in.
"""

from __future__ import annotations

import hashlib
import platform
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


def load_artifact(path: str | Path, *, sha256: str, fmt: str, trust_pickle: bool = False) -> Any:
    """Load a fitted pipeline after checking its SHA-256; refuse pickles without the opt-in."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact file not found: {path}")
    actual = sha256_of(path)
    if actual != sha256:
        raise ArtifactError(
            f"artifact {path.name} was changed after registration: sha256 is {actual[:12]}…, "
            f"registered {sha256[:12]}…; nothing will be served from it"
        )
    if fmt == "skops":
        import skops.io as sio

        try:
            untrusted = sio.get_untrusted_types(file=path)
            return sio.load(path, trusted=_trusted_types(untrusted))
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


# Types outside skops' default trust list that a scikit-learn pipeline commonly contains. Anything
# else is refused, so a crafted file cannot name an arbitrary callable.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.", "pandas.")


def _trusted_types(untrusted: list[str]) -> list[str]:
    refused = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
    if refused:
        raise ArtifactError(
            f"the skops file names types outside scikit-learn/numpy/scipy: {', '.join(refused)}"
        )
    return untrusted
