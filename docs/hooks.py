"""MkDocs hooks: the reference pages are generated from the code during the build.

A committed page holds its hand-written introduction and a marker line; ``on_page_markdown``
replaces the marker with text generated from the code, so a flag, a setting or a route can never
be documented differently from what the code does, and nothing generated is committed:

- ``<!-- gen:cli -->``: every command and option of the ``disco`` typer app (the click tree);
- ``<!-- gen:settings -->``: ``ServiceSettings`` (name, ``DISCO_*`` variable, flag, type, default);
- ``<!-- gen:http-api -->``: every route and schema of the service's OpenAPI document (the app is
  built without loading a model; ``reference/openapi.json`` is written beside the page);
- ``<!-- gen:python PACKAGE -->``: a mkdocstrings ``::: module`` block for every public module of
  PACKAGE, found by walking its folder, so a module that moves keeps its page.

``on_files`` also stands in a one-line page for each guide another issue is still writing
(``PENDING_GUIDES``), so the navigation can name it before it lands.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

# Guides written under other issues: a stand-in page is generated only while the file is absent.
PENDING_GUIDES: dict[str, tuple[str, int]] = {}

_MARKER = re.compile(r"^<!-- gen:(?P<kind>[a-z-]+)(?: (?P<arg>[\w.]+))? -->$", re.MULTILINE)
_openapi_cache: dict[str, Any] = {}
# Docstrings use reST roles (:func:`x`, :class:`~a.b.C`); rendered as Markdown they would show
# the role name before the code span, so the role (and a leading ~) is dropped from the HTML.
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj|const):(<code>)~?")


def _cell(text: Any) -> str:
    """One markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


# ---- CLI ------------------------------------------------------------------------------------
# typer (0.29) builds its commands on its own copy of click, so the tree is read by duck typing:
# a group has ``commands``, a parameter has ``param_type_name``, ``opts`` and ``bare_type()``.


def _param_name(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{(param.name or '').upper()}`"
    return " / ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])


def _param_default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if default is None or callable(default):
        return ""
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    if isinstance(default, (list, tuple)):
        return ", ".join(f"`{d}`" for d in default)
    return f"`{default}`"


def _param_type(param: Any) -> str:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(f"`{c}`" for c in typing.get_args(annotation))
    if getattr(param, "is_flag", False):
        return "flag"
    return str(param.bare_type()) + (" …" if param.multiple or param.nargs == -1 else "")


def _commands(group: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    """Every command under ``group``, depth first, in registration order."""
    found = [(path, group)]
    for name, sub in getattr(group, "commands", {}).items():
        if not sub.hidden:
            found += _commands(sub, [*path, name])
    return found


def cli_reference() -> str:
    """Markdown for every ``disco`` command: usage, help, and a table of its parameters."""
    import typer

    from student_trainer.cli import app

    root = typer.main.get_command(app)
    context = type(root).context_class
    out: list[str] = []
    for path, cmd in _commands(root, ["disco"]):
        title = " ".join(path)
        pieces = " ".join(cmd.collect_usage_pieces(context(cmd, info_name=title)))
        out += [f"## `{title}`", "", "```text", f"{title} {pieces}".rstrip(), "```", ""]
        if cmd.help:
            out += [cmd.help.strip(), ""]
        subs = [(n, c) for n, c in getattr(cmd, "commands", {}).items() if not c.hidden]
        if subs:
            out += ["| command | what it does |", "|---|---|"]
            for name, sub in subs:
                anchor = "-".join([*path, name])
                out.append(f"| [`{name}`](#{anchor}) | {_cell(sub.get_short_help_str(200))} |")
            out.append("")
            continue
        params = [p for p in cmd.params if not getattr(p, "hidden", False) and p.name != "help"]
        if params:
            out += ["| parameter | type | default | meaning |", "|---|---|---|---|"]
            for p in params:
                out.append(
                    f"| {_param_name(p)} | {_param_type(p)} | {_param_default(p)} "
                    f"| {_cell(p.help or '')} |"
                )
            out.append("")
    return "\n".join(out)


# ---- service settings -----------------------------------------------------------------------


def settings_reference() -> str:
    """Markdown table of ``ServiceSettings`` (setting, variable, flag, type, default, meaning),
    rendered by the service's own ``settings_reference()``, the one copy of that table."""
    from teacher_service.service.settings import settings_reference as render

    return render()


# ---- HTTP API -------------------------------------------------------------------------------


def openapi_schema() -> dict[str, Any]:
    """The service's OpenAPI document, from an app built without loading any model."""
    if "schema" not in _openapi_cache:
        from teacher_service.service.app import create_app
        from teacher_service.service.settings import ServiceSettings

        # Not validated (no teacher file needed); the lifespan, which loads the teacher, never runs.
        settings = ServiceSettings.model_construct(teacher="TEACHER", token=None)
        _openapi_cache["schema"] = create_app(settings).openapi()
    return _openapi_cache["schema"]


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#schema-{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_schema_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    return str(schema.get("type", "any"))


def http_reference() -> str:
    """Markdown for every route (parameters, bodies, responses) and every schema."""
    spec = openapi_schema()
    out: list[str] = []
    info = spec.get("info", {})
    out += [f"{info.get('title', '')}, API version {info.get('version', '')}.", ""]
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            out += [f"## `{method.upper()} {path}`", ""]
            if op.get("summary"):
                out += [f"**{op['summary']}**", ""]
            if op.get("description"):
                out += [op["description"].strip(), ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | meaning |", "|---|---|---|---|---|"]
                for p in params:
                    schema = p.get("schema", {})
                    meaning = _cell(p.get("description") or schema.get("description", ""))
                    needed = "yes" if p.get("required") else "no"
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {_schema_type(schema)} | {needed} "
                        f"| {meaning} |"
                    )
                out.append("")
            body = op.get("requestBody")
            if body:
                kinds = ", ".join(
                    f"`{k}` ({_schema_type(v.get('schema', {}))})"
                    for k, v in body.get("content", {}).items()
                )
                out += [f"Request body: {kinds}.", ""]
            responses = op.get("responses", {})
            if responses:
                out += ["| status | meaning | body |", "|---|---|---|"]
                for code, resp in responses.items():
                    kinds = ", ".join(
                        f"`{k}` {_schema_type(v.get('schema', {}))}"
                        for k, v in resp.get("content", {}).items()
                    )
                    out.append(f"| {code} | {_cell(resp.get('description', ''))} | {kinds} |")
                out.append("")
    schemas = spec.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in schemas.items():
            out += [f"### {name} {{#schema-{name.lower()}}}", ""]
            if schema.get("description"):
                out += [schema["description"].strip(), ""]
            props = schema.get("properties", {})
            required = set(schema.get("required", []))
            if props:
                out += ["| field | type | required | meaning |", "|---|---|---|---|"]
                for field, sub in props.items():
                    needed = "yes" if field in required else "no"
                    out.append(
                        f"| `{field}` | {_schema_type(sub)} | {needed} "
                        f"| {_cell(sub.get('description', ''))} |"
                    )
                out.append("")
    return "\n".join(out)


# ---- Python API -----------------------------------------------------------------------------


def public_modules(package: str) -> list[str]:
    """Dotted names of ``package`` and its public modules and sub-packages, sorted.

    Private names (``_x``) and the CLI glue (``cli``, ``*_cli``: see the command-line reference)
    are left out.
    """
    base = ROOT / package.replace(".", "/")
    names = [package]
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts) or len(parts) == 1:
            continue
        if parts[-1] == "cli" or parts[-1].endswith("_cli"):
            continue
        names.append(".".join(parts))
    return sorted(set(names))


def python_reference(package: str) -> str:
    """mkdocstrings blocks for every public module of ``package``."""
    out = []
    for name in public_modules(package):
        is_package = (ROOT / name.replace(".", "/") / "__init__.py").exists()
        out.append(f"::: {name}")
        # A package's __init__ re-exports lazily; its members are documented in their modules.
        out.append("    options:")
        out.append(f"      members: {'false' if is_package else 'null'}")
        out.append("")
    return "\n".join(out)


# ---- hooks ----------------------------------------------------------------------------------

# Folders whose new pages join their navigation section by themselves (title: the page's H1),
# so a helper adding a dated results page or a guide does not have to edit mkdocs.yml.
AUTO_NAV = {"guides": "Guides", "results": "Results"}


def _nav_paths(nav: Any) -> set[str]:
    """Every page path named anywhere in a nav tree."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(_nav_paths(item) for item in nav)) if nav else set()
    if isinstance(nav, dict):
        return set().union(*(_nav_paths(v) for v in nav.values())) if nav else set()
    return set()


def on_config(config: Any) -> Any:
    """Append pages of ``AUTO_NAV`` folders that the nav does not name to their section."""
    nav = config["nav"] or []
    named = _nav_paths(nav)
    docs = Path(config["docs_dir"])
    for folder, section in AUTO_NAV.items():
        entries = next((e[section] for e in nav if isinstance(e, dict) and section in e), None)
        if entries is None:
            continue
        for page in sorted((docs / folder).glob("*.md")):
            uri = f"{folder}/{page.name}"
            if uri in named:
                continue
            first = page.read_text(encoding="utf-8").lstrip().splitlines()[:1]
            title = first[0].lstrip("# ").strip() if first and first[0].startswith("# ") else uri
            entries.append({title: uri})
    return config


def on_files(files: Files, config: Any) -> Files:
    """Stand-in pages for pending guides; ``reference/openapi.json`` for the HTTP reference."""
    for uri, (title, issue) in PENDING_GUIDES.items():
        if files.get_file_from_path(uri) is None:
            text = f"# {title}\n\nThis guide is being written under issue #{issue}.\n"
            files.append(File.generated(config, uri, content=text))
    spec = json.dumps(openapi_schema(), indent=2, sort_keys=True)
    files.append(File.generated(config, "reference/openapi.json", content=spec))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace each ``<!-- gen:... -->`` marker with the generated reference."""

    def expand(match: re.Match[str]) -> str:
        kind, arg = match["kind"], match["arg"]
        if kind == "cli":
            return cli_reference()
        if kind == "settings":
            return settings_reference()
        if kind == "http-api":
            return http_reference()
        if kind == "python" and arg:
            return python_reference(arg)
        raise ValueError(f"{page.file.src_uri}: unknown generator marker {match[0]!r}")

    return _MARKER.sub(expand, markdown)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Drop reST role names from the generated Python API pages (see ``_ROLE``)."""
    if page.file.src_uri.startswith("reference/python/"):
        return _ROLE.sub(r"\1", html)
    return html
