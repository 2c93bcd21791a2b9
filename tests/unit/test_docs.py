"""The docs say what the code does: every setting, policy field, API path and command is documented,
the generated reference sections are current, and every relative link leads to a file."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from controller import config
from controller.core.policy import Policy

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlcanary_docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _generator()


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_every_setting_appears_in_configuration_md_with_its_default() -> None:
    text = _read("configuration.md")
    for variable, default, _help in config.describe():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{variable}` |")), None)
        assert row is not None, f"{variable} is not in docs/configuration.md"
        assert generate.format_default(default) in row, f"{variable}: default {default!r} not in {row!r}"


def test_the_variables_that_are_not_settings_are_documented() -> None:
    text = _read("configuration.md")
    for variable in (*config.NOT_SETTINGS, "PROMETHEUS_MULTIPROC_DIR"):
        assert f"`{variable}`" in text, f"{variable} is not in docs/configuration.md"


def test_every_policy_field_path_appears_in_policy_md() -> None:
    text = _read("policy.md")
    paths = generate.policy_paths()
    assert "gates.accuracy.margin" in paths and "canary.steps" in paths  # the walk reaches nested fields
    missing = [p for p in paths if f"`{p}`" not in text]
    assert not missing, f"policy fields missing from docs/policy.md: {missing}"


def test_policy_md_examples_are_valid_policies() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", _read("policy.md"), re.S)
    assert len(blocks) >= 3
    for block in blocks:
        Policy.parse(yaml.safe_load(block))  # raises PolicyError naming the field if an example is wrong


def test_every_openapi_path_appears_in_http_api_md() -> None:
    text = _read("http-api.md")
    missing = [f"{m} {p}" for m, p in generate.openapi_paths() if f"`{p}`" not in text]
    assert not missing, f"OpenAPI operations missing from docs/http-api.md: {missing}"


def test_every_cli_command_appears_in_cli_md() -> None:
    text = _read("cli.md")
    commands = [" ".join(path) for path, _ in generate.cli_commands()]
    assert "mlcanary rollout rollback" in commands and "mlcanary report" in commands
    missing = [c for c in commands if f"### {c}\n" not in text]
    assert not missing, f"commands missing from docs/cli.md: {missing}"


def test_generated_sections_are_up_to_date() -> None:
    stale = [path.name for path, (old, new) in generate.regenerate().items() if old != new]
    assert not stale, f"stale generated sections in {stale}: run .venv/bin/python docs/generate.py"


def test_render_replaces_only_the_marked_section() -> None:
    begin, end = generate.BEGIN.format(name="x"), generate.END.format(name="x")
    text = f"before\n{begin}\nold\n{end}\nafter\n"
    assert generate.render(text, "x", "new") == f"before\n{begin}\nnew\n{end}\nafter\n"
    with pytest.raises(ValueError, match="markers"):
        generate.render("no markers here", "x", "new")


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not links
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # absolute URL or in-page anchor
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files {broken}"
