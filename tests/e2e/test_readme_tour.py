"""The README's five-minute tour, run as written (issue 19): every ```sh block of steps 1-9, copy-pasted.

From a fresh folder outside the repository standing for its root (only ``.venv`` in it, linked to this
one): step 1's server is the command its comment names (``make serve`` needs the Makefile), on a free
port instead of 8080 (the only change made to the blocks: other test runs share this machine), and
steps 2-9 run one after the other in one bash, as a reader pastes them into terminal 2.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def tour_block(number: int) -> str:
    """The ```sh block of the README tour's step ``number``."""
    step = (ROOT / "README.md").read_text().split(f"**{number}. ", 1)[1]
    return step.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_the_readme_tour_runs_as_written_from_a_fresh_folder(tmp_path: Path) -> None:
    here = tmp_path / "mlcanary"
    here.mkdir()
    (here / ".venv").symlink_to(Path(sys.executable).parent.parent)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLCANARY_")}
    env["MLCANARY_CONTROLLER_INTERVAL"] = "1"  # the tour waits 5 s for a look; a loaded machine needs margin

    def pasted(number: int) -> str:
        return tour_block(number).replace("localhost:8080", f"localhost:{port}")

    serve = re.search(r"make serve +# = (.+)", tour_block(1))
    assert serve, "step 1 names the command behind make serve"
    server = subprocess.Popen(
        ["bash", "-c", f"exec {serve.group(1)}"], cwd=here, env={**env, "MLCANARY_PORT": str(port)},
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("wb"), start_new_session=True,
    )  # fmt: skip
    try:
        script = "\n".join(
            [
                f"until curl -sf localhost:{port}/healthz >/dev/null; do sleep 0.5; done",  # terminal 1 is up
                *(f"echo '=== step {n}'\n{pasted(n)}" for n in range(2, 10)),
            ]
        )
        done = subprocess.run(
            ["bash", "-ec", script], cwd=here, env=env, capture_output=True, text=True, timeout=1500
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

    steps = dict(re.findall(r"=== step (\d)\n(.*?)(?==== step |\Z)", done.stdout, re.S))
    assert re.search(r"registered churn:2 \(id 2, classification, artifact", steps["3"])
    assert re.search(r"churn:2 +classification +artifact +accuracy=", steps["3"])
    assert "created deployment churn with champion churn:1" in steps["3"]
    # step 4 right after the deployment: answered by an arm, or the 404 the README says routers give
    # until their next refresh (about a second; more on a loaded machine)
    answered = "X-Mlcanary-Arm: champion" in steps["4"] or '"model_name"' in steps["4"]
    assert answered or steps["4"].count('"code":"deployment_not_found"') == 2, steps["4"]
    assert re.search(r"started rollout 1 pending \(mode shadow", steps["5"])
    labels = json.loads(steps["6"])
    # every label is kept: one whose request is not recorded yet (the last ones, answered an instant
    # earlier) is stored as pending, counted in "stored" and listed as unknown, and joins its pair later
    assert labels["stored"] == 300 and labels["dropped_request_ids"] == [], labels
    assert set(labels["unknown_request_ids"]) <= {f"tour-{i}" for i in range(1, 301)}, labels
    assert re.search(r"step 0: 300 requests", steps["7"]), steps["7"]
    assert re.search(r"rollout\.start +rollout 1 +rollout started: shadow", steps["7"])
    document, end = json.JSONDecoder().raw_decode(steps["8"])  # curl -s: two JSON answers, no newline
    assert document["name"] == "churn" and document["rollout"]["phase"] == "shadowing"
    paused = json.loads(steps["8"][end:])
    assert (paused["phase"], paused["reason"]) == ("paused", "manual_pause")
    assert re.search(r"rollout 1: rolled_back, mode shadow, .*ended: tour over", steps["9"]), steps["9"]
    assert sorted(p.name for p in here.iterdir()) == [".venv", "var"]  # nothing left in the "repository root"
    report = (here / "var" / "tour" / "churn-report.html").read_text()
    assert report.lstrip().lower().startswith("<!doctype html") and "churn:2" in report
