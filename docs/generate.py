"""Regenerate the reference parts of the docs from the code, between marked sections.

    .venv/bin/python docs/generate.py           # rewrite the generated sections in place
    .venv/bin/python docs/generate.py --check   # exit 1, naming the files, if any section is stale

A generated section sits between ``<!-- BEGIN GENERATED: NAME -->`` and ``<!-- END GENERATED: NAME -->``;
everything outside the markers is written by hand and left alone. The sources:

    configuration.md  settings      controller.config.Settings (describe(): variable, default, help)
    policy.md         policy-*      controller.core.policy's pydantic models and their docstrings
                      policy-default  Policy().to_dict() as YAML
    cli.md            cli           click's own --help of every `mlcanary` command
    http-api.md       openapi       controller.http.openapi.document()

tests/unit/test_docs.py fails when a section is stale, so a change to the code without the docs shows.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from controller import config  # noqa: E402
from controller.cli.main import cli  # noqa: E402
from controller.core import policy  # noqa: E402
from controller.http import openapi  # noqa: E402

BEGIN = "<!-- BEGIN GENERATED: {name} (docs/generate.py; do not edit by hand) -->"
END = "<!-- END GENERATED: {name} -->"
HELP_WIDTH = 100


# --------------------------------------------------------------------------------------------- settings
def format_default(value: str) -> str:
    """Render a setting's default (as `config.describe()` gives it) for a Markdown table."""
    if value == "":
        return "(empty)"
    if value == "None":
        return "(unset)"
    return f"`{value}`"


def settings_table() -> str:
    """Return the table of every setting: variable, default, meaning."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for variable, default, text in config.describe():
        lines.append(f"| `{variable}` | {format_default(default)} | {_cell(text)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- policy
_ENTRY = re.compile(r"^((?:``\w+``(?:\s*/\s*)?)+):\s*(.*)$")


def docstring_fields(model: type[BaseModel]) -> tuple[str, dict[str, str]]:
    """Split a model's docstring into its summary and ``field``: text entries (one entry may name several)."""
    doc = typing.cast(str, model.__doc__ or "")
    entries: dict[str, str] = {}
    current: list[str] | None = None
    names: list[str] = []
    summary: list[str] = []
    for raw in doc.strip().splitlines():
        line = raw.strip()
        match = _ENTRY.match(line)
        if match:
            if current is not None:
                for name in names:
                    entries[name] = " ".join(current)
            names = re.findall(r"``(\w+)``", match.group(1))
            current = [match.group(2)]
        elif current is not None and line:
            current.append(line)
        elif current is None:
            summary.append(line)
    if current is not None:
        for name in names:
            entries[name] = " ".join(current)
    return " ".join(line for line in summary if line), {k: _rst(v) for k, v in entries.items()}


def _rst(text: str) -> str:
    return text.replace("``", "`")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _constraints(info: Any) -> str:
    parts = []
    for item in info.metadata:
        for attribute, symbol in _BOUNDS.items():
            value = getattr(item, attribute, None)
            if value is not None:
                parts.append(f"{symbol} {value:g}")
    return ", ".join(parts)


def _yaml_value(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def policy_rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str, str]]:
    """Yield (path, type, default, rule, meaning) for every leaf field of a policy model, depth first."""
    _, texts = docstring_fields(model)
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if _is_model(info.annotation):
            if info.annotation is policy.Gate:
                gate_text = texts.get(name, "")
                _, gate_fields = docstring_fields(policy.Gate)
                default = info.default
                for sub, sub_info in policy.Gate.model_fields.items():
                    meaning = "see [Roles](#roles)" if sub == "role" else gate_fields.get(sub, "")
                    rule = _constraints(sub_info)
                    if sub == "margin":
                        meaning, rule = gate_text, _margin_rule(gate_text)
                    value = getattr(default, sub)
                    yield (f"{path}.{sub}", _type_name(sub_info.annotation),
                           _default_cell(value), rule, meaning)  # fmt: skip
            # other nested models get their own table
            continue
        default = info.default
        yield (
            path,
            _type_name(info.annotation),
            _default_cell(default),
            _constraints(info),
            texts.get(name, ""),
        )


def _margin_rule(text: str) -> str:
    found = re.search(r"\(([^()]*[<>][^()]*)\)", text)
    return found.group(1).split(";")[0].strip() if found else ""


def _default_cell(value: Any) -> str:
    if value is None:
        return "`null`"
    return f"`{_yaml_value(value)}`"


POLICY_SECTIONS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("policy-top", policy.Policy, ""),
    ("policy-shadow", policy.Shadow, "shadow."),
    ("policy-canary", policy.Canary, "canary."),
    ("policy-gates", policy.Gates, "gates."),
    ("policy-slo", policy.Slo, "slo."),
    ("policy-reproducibility", policy.Reproducibility, "reproducibility."),
    ("policy-watch", policy.Watch, "watch."),
    ("policy-error-budget", policy.ErrorBudget, "error_budget."),
)


def policy_table(model: type[BaseModel], prefix: str) -> str:
    """Return one model's summary (from its docstring) and a table of its fields."""
    summary, _ = docstring_fields(model)
    lines = [_rst(summary), "", "| Field | Type | Default | Allowed | Meaning |", "|---|---|---|---|---|"]
    for path, kind, default, rule, meaning in policy_rows(model, prefix):
        lines.append(f"| `{path}` | {kind} | {default} | {_cell(rule)} | {_cell(meaning)} |")
    return "\n".join(lines)


def policy_paths() -> list[str]:
    """Return the path of every leaf field of a policy (what the tests look for in policy.md)."""
    return [row[0] for _, model, prefix in POLICY_SECTIONS for row in policy_rows(model, prefix)]


def policy_default() -> str:
    """Return the complete default policy as YAML (what `Policy()` stores on a rollout)."""
    text = yaml.safe_dump(policy.Policy().to_dict(), sort_keys=False, default_flow_style=False)
    return f"```yaml\n{text}```"


# -------------------------------------------------------------------------------------------------- cli
def cli_commands(
    command: click.Command = cli, path: tuple[str, ...] = ("mlcanary",)
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Yield (path, command) for the group and every command below it, in alphabetical order."""
    yield path, command
    if isinstance(command, click.Group):  # the root group loads its commands lazily: ask it for each
        context = click.Context(command)
        for name in sorted(command.list_commands(context)):
            found = command.get_command(context, name)
            assert found is not None
            yield from cli_commands(found, (*path, name))


def command_help(path: tuple[str, ...]) -> str:
    """Return click's --help text of one command, at a fixed width."""
    parent: click.Context | None = None
    command: click.Command = cli
    for index, name in enumerate(path):
        if index:
            assert isinstance(command, click.Group) and parent is not None
            found = command.get_command(parent, name)
            assert found is not None
            command = found
        parent = click.Context(
            command,
            info_name=name,
            parent=parent,
            terminal_width=HELP_WIDTH,
            max_content_width=HELP_WIDTH,
            **command.context_settings,
        )
    assert parent is not None
    return command.get_help(parent).rstrip()


def cli_reference() -> str:
    """Return a summary table of every command, then each command's help."""
    lines = ["| Command | What it does |", "|---|---|"]
    commands = list(cli_commands())
    for path, command in commands[1:]:
        lines.append(
            f"| [`{' '.join(path)}`](#{_anchor(' '.join(path))}) | {_cell(command.get_short_help_str(120))} |"
        )
    for path, _command in commands:
        lines += ["", f"### {' '.join(path)}", "", "```text", command_help(path), "```"]
    return "\n".join(lines)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


# ---------------------------------------------------------------------------------------------- openapi
def _auth(operation: dict[str, Any], method: str) -> str:
    if operation.get("security") == []:
        return "public"
    if operation.get("x-mlcanary-role"):
        return str(operation["x-mlcanary-role"])
    return "viewer" if method.upper() in ("GET", "HEAD") else "operator"


def _schema_text(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "allOf" in schema:
        return " + ".join(_schema_text(s) for s in schema["allOf"])
    if "oneOf" in schema:
        return " or ".join(_schema_text(s) for s in schema["oneOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        if "object" in kind and "properties" in schema:
            others = [k for k in kind if k != "object"]
            return " or ".join([_schema_text({**schema, "type": "object"}), *others])
        kind = " or ".join(kind)
    if kind == "array" and "items" in schema:
        return f"array of {_schema_text(schema['items'])}"
    if kind == "object" and "properties" in schema:
        inner = ", ".join(f"`{k}`: {_schema_text(v)}" for k, v in schema["properties"].items())
        return f"object {{{inner}}}"
    bounds = [f"{s} {schema[k]}" for k, s in (("minimum", ">="), ("maximum", "<=")) if k in schema]
    return str(kind) + (f" ({', '.join(bounds)})" if bounds else "")


def openapi_paths() -> list[tuple[str, str]]:
    """Return (METHOD, path) for every operation of the OpenAPI document."""
    return [(method.upper(), path) for path, item in openapi.document()["paths"].items() for method in item]


def openapi_reference() -> str:
    """Return the route table, each operation's parameters, bodies and answers, and the schemas."""
    doc = openapi.document()
    lines = ["| Method | Path | Auth | Summary |", "|---|---|---|---|"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            lines.append(
                f"| {method.upper()} | `{path}` | {_auth(operation, method)} | {_cell(operation['summary'])} |"
            )
    for tag in [t["name"] for t in doc["tags"]]:
        lines += ["", f"### Routes: {tag}"]
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                if tag in operation["tags"]:
                    lines += ["", *_operation_lines(method, path, operation)]
    lines += ["", "### Schemas"]
    for name, schema in doc["components"]["schemas"].items():
        lines += ["", f"#### {name}", ""]
        lines += _schema_lines(schema)
    return "\n".join(lines)


def _operation_lines(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    lines = [
        f"#### {method.upper()} {path}",
        "",
        f"{operation['summary']}. Auth: **{_auth(operation, method)}**.",
        "",
    ]
    for parameter in operation.get("parameters", []):
        where = parameter["in"]
        required = "required" if parameter.get("required") else "optional"
        note = f": {parameter['description']}" if parameter.get("description") else ""
        default = parameter["schema"].get("default")
        default_text = f", default `{default}`" if default is not None else ""
        lines.append(
            f"- {where} `{parameter['name']}` ({_schema_text(parameter['schema'])}, {required}{default_text}){note}"
        )
    body = operation.get("requestBody")
    if body:
        for media, content in body["content"].items():
            needed = "" if body.get("required") else " (optional)"
            lines.append(f"- body{needed} `{media}`: {_schema_text(content.get('schema'))}")
    errors = []
    for status, answer in operation["responses"].items():
        content = answer.get("content") or {}
        if status >= "400" and [c.get("schema") for c in content.values()] == [
            {"$ref": "#/components/schemas/Error"}
        ]:
            errors.append(f"{status} {answer['description'].lower()}")
            continue
        shapes = ", ".join(
            f"`{media}` {_schema_text(c.get('schema'))}".rstrip() for media, c in content.items()
        )
        lines.append(f"- **{status}** {answer['description']}" + (f": {shapes}" if shapes else ""))
    if errors:
        lines.append(f"- errors, as [Error](#error): {'; '.join(errors)}")
    return lines


def _schema_lines(schema: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "description" in schema:
        lines += [_cell(schema["description"]), ""]
    parts = schema.get("allOf", [schema])
    refs = [p for p in parts if "$ref" in p]
    if refs:
        lines += [f"Everything in {', '.join(_schema_text(r) for r in refs)}, and:", ""]
    properties = {k: v for p in parts for k, v in p.get("properties", {}).items()}
    required = {r for p in parts for r in p.get("required", [])}
    if properties:
        lines += ["| Field | Type | Required | Notes |", "|---|---|---|---|"]
        for key, value in properties.items():
            notes = [value.get("description", "")]
            if "default" in value:
                notes.append(f"default `{value['default']}`")
            if "pattern" in value:
                notes.append(f"pattern `{value['pattern']}`")
            for k, s in (("minItems", "at least"), ("maxItems", "at most")):
                if k in value:
                    notes.append(f"{s} {value[k]} items")
            lines.append(
                f"| `{key}` | {_cell(_schema_text(value))} | {'yes' if key in required else 'no'} |"
                f" {_cell('; '.join(n for n in notes if n))} |"
            )
    if schema.get("additionalProperties") is False:
        lines += ["", "Unknown fields are refused (400)."]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------------------ driver
SECTIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "settings": ("configuration.md", settings_table),
    **{
        name: ("policy.md", (lambda m=model, p=prefix: policy_table(m, p)))
        for name, model, prefix in POLICY_SECTIONS
    },
    "policy-default": ("policy.md", policy_default),
    "cli": ("cli.md", cli_reference),
    "openapi": ("http-api.md", openapi_reference),
}


def render(text: str, name: str, body: str) -> str:
    """Return text with the section NAME's body replaced; ValueError if its markers are missing."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"markers of section {name!r} not found")
    return text[: start + len(begin)] + "\n" + body.rstrip() + "\n" + text[stop:]


def regenerate(docs: Path = DOCS) -> dict[Path, tuple[str, str]]:
    """Return {file: (current text, regenerated text)} for every file with generated sections."""
    results: dict[Path, tuple[str, str]] = {}
    for name, (file, build) in SECTIONS.items():
        path = docs / file
        current = results[path][0] if path in results else path.read_text(encoding="utf-8")
        updated = results[path][1] if path in results else current
        results[path] = (current, render(updated, name, build()))
    return results


def main(argv: list[str]) -> int:
    stale = [path for path, (old, new) in regenerate().items() if old != new]
    if "--check" in argv:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run: python docs/generate.py)", file=sys.stderr)
        return 1 if stale else 0
    for path, (old, new) in regenerate().items():
        if old != new:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
