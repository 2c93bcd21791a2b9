"""A newcomer's small ones (issue 19): documented error codes, near-miss columns, a tour that stays tidy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from router.inputs import InvalidInput, build_batch
from storage.entities import Column

ROOT = Path(__file__).resolve().parents[2]


def test_every_error_code_the_servers_answer_is_in_the_http_api_docs() -> None:
    codes: set[str] = set()
    for path in [*(ROOT / "router").glob("*.py"), *(ROOT / "controller" / "http").glob("*.py")]:
        text = path.read_text()
        codes |= set(re.findall(r'code="([a-z_]+)"', text))
        codes |= set(re.findall(r'(?:ApiError|LabelsError|error_response)\(\s*\d{3},\s*"([a-z_]+)"', text))
    assert {"missing_columns", "invalid_labels"} <= codes
    documented = (ROOT / "docs" / "http-api.md").read_text()
    assert sorted(c for c in codes if f"`{c}`" not in documented) == []


def test_a_missing_column_names_the_near_miss_that_was_sent() -> None:
    schema = (Column("age", "float"), Column("plan", "str"))
    with pytest.raises(InvalidInput, match=r"missing column\(s\): plan \(did you mean 'Plan'\?\)") as caught:
        build_batch({"age": [41.0], "Plan": ["pro"]}, schema, max_rows=10)
    assert caught.value.code == "missing_columns"
    with pytest.raises(InvalidInput, match=r"missing column\(s\): age, plan$"):
        build_batch({"zzz": [1]}, schema, max_rows=10)


def _tour_block(number: int) -> str:
    readme = (ROOT / "README.md").read_text()
    step = readme.split(f"**{number}. ", 1)[1]
    return step.split("```sh\n", 1)[1].split("\n```", 1)[0]


@pytest.mark.timeout(1200)  # fits and saves two pipelines: minutes on a loaded shared machine
def test_the_readme_tour_writes_its_files_under_var_tour_not_the_repository_root(tmp_path: Path) -> None:
    """Step 2 as written, copy-pasted into bash from a fresh folder standing for the repository root."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    done = subprocess.run(
        ["bash", "-ec", _tour_block(2)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".venv", "var"]
    assert {"churn-1.skops", "churn-2.skops", "holdout.csv", "golden.csv"} <= {
        p.name for p in (tmp_path / "var" / "tour").iterdir()
    }
    later = _tour_block(7)
    assert "--output churn-report.html" in later  # written in var/tour too: the same shell, after the cd


def test_one_report_format_name_is_documented_and_md_still_works() -> None:
    import click

    from controller.cli.report import report

    (option,) = [p for p in report.params if p.name == "fmt"]
    context = click.Context(report)
    assert option.type.convert("md", option, context) == "markdown"
    assert option.type.convert("markdown", option, context) == "markdown"
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    assert "[html|json|markdown]" in cli_doc and "|md]" not in cli_doc
