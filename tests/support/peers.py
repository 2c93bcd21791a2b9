"""Real model servers for tests: MLServer, a KServe model server and `mlflow models serve`, on loopback.

Each server kind lives in its own virtual environment under .cache/peers/<kind> in the repository
root (git-ignored; MLCANARY_PEER_CACHE moves it, e.g. to a directory a CI machine keeps between
runs): their pins conflict with mlcanary's. The first use creates it with pip from the package index
(the three in parallel, ~5 minutes once); a marker file records the requirements it was built from,
so a later run reuses it and a changed requirement rebuilds it. scikit-learn is pinned to the version of
this environment: the tests fit the models here and hand them to the servers as joblib files.

    python = peer_python("mlserver")               # raises PeerUnavailable(reason) if it cannot install
    server = start_mlserver(python, folder, {"name": model_path, ...}, tensor={"name"})
    server.url, server.stop()

Every server runs in its own process group (start_new_session) and is killed with it at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlpipes
import pandas as pd
import sklearn

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MLCANARY_PEER_CACHE") or ROOT / ".cache" / "peers")
SUPPORT = Path(__file__).resolve().parent
_SKLEARN = f"scikit-learn=={sklearn.__version__}"
REQUIREMENTS: dict[str, list[str]] = {
    "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", _SKLEARN, "tritonclient[http]"],
    "kserve": ["kserve==0.21.*", _SKLEARN],
    "mlflow": ["mlflow>=3,<4", _SKLEARN],
}
MARKER = ".mlcanary-requirements"
NUMERIC = ["age", "tenure_months", "monthly_charges"]
INSTALL_TIMEOUT_S = 1800  # pip under a load of 20+ on 2 cores took 15 min for mlflow
READY_TIMEOUT_S = 180
_lock = threading.Lock()
_installs: dict[str, Future[None]] = {}
_pool = ThreadPoolExecutor(max_workers=len(REQUIREMENTS), thread_name_prefix="peer-install")


class PeerUnavailable(RuntimeError):
    """A peer server's environment cannot be installed or the server does not start."""


def peer_python(kind: str, *, prefetch: bool = True) -> Path:
    """Return the Python of kind's cached virtual environment, creating it first if needed.

    prefetch: also start building the other kinds' missing environments, in parallel (pip spends
    most of its time waiting on downloads and unpacking; three at once take about as long as one).
    """
    with _lock:
        for name in REQUIREMENTS if prefetch else (kind,):
            if name not in _installs and not _installed(name):
                _installs[name] = _pool.submit(_install, name)
        future = _installs.get(kind)
    if future is not None:
        future.result()  # re-raises PeerUnavailable
    return CACHE / kind / "bin" / "python"


def _installed(kind: str) -> bool:
    marker = CACHE / kind / MARKER
    python = CACHE / kind / "bin" / "python"
    return python.exists() and marker.exists() and marker.read_text() == "\n".join(REQUIREMENTS[kind]) + "\n"


def _install(kind: str) -> None:
    venv = CACHE / kind
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = CACHE / f"{kind}-install.log"
    try:
        with log.open("w") as out:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(venv)], check=True, stdout=out, stderr=out
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS[kind]],
                check=True,
                stdout=out,
                stderr=out,
                timeout=INSTALL_TIMEOUT_S,
            )
    except (subprocess.SubprocessError, OSError) as error:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise PeerUnavailable(f"cannot install {kind} ({error}): {' | '.join(tail)}") from error
    (venv / MARKER).write_text("\n".join(REQUIREMENTS[kind]) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PeerServer:
    """One model server process (and its process group)."""

    def __init__(self, kind: str, command: list[str], *, cwd: Path, port: int, ready_path: str) -> None:
        self.kind = kind
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = cwd / f"{kind}-{port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PYTHONUNBUFFERED"] = "1"
        env["PATH"] = f"{Path(command[0]).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow runs `uvicorn`
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_ready(ready_path)

    def _wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        self.stop()
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        raise PeerUnavailable(f"{self.kind} did not become ready on port {self.port}: {' | '.join(tail)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start_mlserver(python: Path, folder: Path, models: dict[str, Path], *, pandas: set[str]) -> PeerServer:
    """Serve joblib models with MLServer's sklearn runtime (names in `pandas` get content_type pd).

    parallel_workers 0: MLServer's inference worker pool crashes on the current uvloop.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "host": "127.0.0.1",
        "parallel_workers": 0,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    for name, path in models.items():
        model_dir = folder / name
        model_dir.mkdir(exist_ok=True)
        (model_dir / "model.joblib").write_bytes(path.read_bytes())
        model_settings: dict[str, Any] = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "v1"},
        }
        if name in pandas:
            model_settings["parameters"]["content_type"] = "pd"
        (model_dir / "model-settings.json").write_text(json.dumps(model_settings))
    mlserver = python.parent / "mlserver"
    return PeerServer("mlserver", [str(mlserver), "start", str(folder)], cwd=folder, port=port,
                      ready_path="/v2/health/ready")  # fmt: skip


def start_kserve(python: Path, folder: Path, models: dict[str, Path]) -> PeerServer:
    """Serve joblib models with a KServe ModelServer (tests/support/kserve_server.py), V2 over HTTP."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    spec = json.dumps({name: str(path) for name, path in models.items()})
    command = [str(python), str(SUPPORT / "kserve_server.py"), str(port), str(free_port()), spec]
    return PeerServer("kserve", command, cwd=folder, port=port, ready_path="/v2/health/ready")


def mlflow_model(python: Path, joblib_path: Path, target: Path) -> Path:
    """Turn a joblib pipeline into an MLflow model directory with mlflow.sklearn.save_model."""
    script = (
        "import sys, joblib, mlflow.sklearn; "
        "mlflow.sklearn.save_model(joblib.load(sys.argv[1]), sys.argv[2], serialization_format='pickle')"
    )
    done = subprocess.run(
        [str(python), "-c", script, str(joblib_path), str(target)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise PeerUnavailable(f"mlflow cannot save the model: {done.stderr.strip().splitlines()[-1:]}")
    return target


def start_mlflow(python: Path, folder: Path, model_dir: Path) -> PeerServer:
    """`mlflow models serve -m DIR --env-manager local` on a loopback port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mlflow = python.parent / "mlflow"
    command = [str(mlflow), "models", "serve", "-m", str(model_dir), "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]  # fmt: skip
    return PeerServer("mlflow", command, cwd=folder, port=port, ready_path="/ping")


def triton_request(python: Path, spec: dict[str, Any]) -> bytes:
    """Encode a request with tritonclient itself (in the MLServer environment): JSON tensors.

    spec: {"id", "inputs": [{"name", "datatype", "array": nested list, "dtype": numpy dtype}],
    "outputs": [names]}.
    """
    script = r"""
import json, sys
import numpy as np
from tritonclient.http import InferInput, InferRequestedOutput
from tritonclient.http._utils import _get_inference_request
spec = json.loads(sys.stdin.read())
inputs = []
for s in spec["inputs"]:
    array = np.asarray(s["array"], dtype=s["dtype"])
    tensor = InferInput(s["name"], list(array.shape), s["datatype"])
    tensor.set_data_from_numpy(array, binary_data=False)
    inputs.append(tensor)
outputs = [InferRequestedOutput(n, binary_data=False) for n in spec["outputs"]]
body, size = _get_inference_request(inputs=inputs, request_id=spec["id"], outputs=outputs or None,
    sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
    custom_parameters=None)
assert size is None
sys.stdout.buffer.write(body)
"""
    done = subprocess.run(
        [str(python), "-c", script], input=json.dumps(spec).encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise PeerUnavailable(f"tritonclient failed: {done.stderr.decode(errors='replace')[-300:]}")
    return done.stdout


@dataclass(frozen=True)
class Models:
    """The fitted pipelines every server serves, and where their joblib files are."""

    columns: Any  # ColumnTransformer + LogisticRegression on the churn DataFrame
    tensor: Any  # StandardScaler + LogisticRegression on a NumPy array of the numeric columns
    columns_path: Path
    tensor_path: Path
    directory: Path


def frame_of(rows: int, *, seed: int, numeric_only: bool = False) -> pd.DataFrame:
    frame, _ = mlpipes.churn_frame(rows, seed=seed)
    return frame[NUMERIC] if numeric_only else frame
