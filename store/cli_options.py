"""Command-line options derived from typed configs, so a flag and its field can never disagree.

A config dataclass documents each field with the docstring right under it (STYLE §3); a pydantic
settings class with ``Field(description=...)``. :func:`dataclass_options` and
:func:`settings_options` turn those fields into typer options (type, default, help from the one-line
doc), and :func:`with_options` appends them to a command function, which receives them as keyword
arguments (``**config``). :func:`exits_on_error` is the one place a command turns a
``DiscoError`` into one ``error:`` line and exit status 1. Only the standard library, typer and
rich are imported here (``--help`` must not load torch).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.markup import escape

from store.errors import DiscoError

__all__ = [
    "apply_remote_options",
    "dataclass_options",
    "exits_on_error",
    "field_docs",
    "remote_options",
    "settings_options",
    "with_options",
]

F = TypeVar("F", bound=Callable[..., Any])
_KW = inspect.Parameter.KEYWORD_ONLY


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of the attribute docstrings in ``cls``'s body (and its bases').

    The docstring is the string literal right after an annotated assignment; its whitespace is
    folded to single spaces and reST double backticks are dropped.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for stmt, after in zip(body.body, body.body[1:], strict=False):
            doc = getattr(after, "value", None)
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(doc, ast.Constant)
                and isinstance(doc.value, str)
            ):
                docs[stmt.target.id] = " ".join(doc.value.replace("``", "").split())
    return docs


def _option_type(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """A type typer can parse for ``annotation`` and the allowed values of a ``Literal``.

    ``X | None`` -> X; ``Literal["a", "b"]`` -> str (choices returned); pydantic's ``FilePath``
    -> Path; ``SecretStr`` -> str.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _option_type(args[0])
    if origin is Annotated:
        return _option_type(typing.get_args(annotation)[0])
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return Path, ()
    if getattr(annotation, "__name__", "") == "SecretStr":
        return str, ()
    return annotation, ()


def _param(
    name: str,
    annotation: Any,
    default: Any,
    help_text: str,
    decls: Sequence[str] = (),
    show_default: bool | str = True,
) -> inspect.Parameter:
    option = typer.Option(*decls, help=escape(help_text), show_default=show_default)
    return inspect.Parameter(name, _KW, default=default, annotation=Annotated[annotation, option])


def dataclass_options(
    cls: type,
    *,
    exclude: Iterable[str] = (),
    decls: Mapping[str, Sequence[str]] | None = None,
    helps: Mapping[str, str] | None = None,
) -> list[inspect.Parameter]:
    """One keyword parameter per field of dataclass ``cls`` (in field order), typed for typer.

    The option is ``--field-name`` (``decls[field]`` overrides the flag names), its default is the
    field's default (a field without one is a required option; ``default_factory`` fields must be
    excluded), its help the field's docstring (``helps[field]`` overrides it).
    """
    skip = set(exclude)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} has a default factory: exclude it")
        default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        annotation, choices = _option_type(hints[f.name])
        if typing.get_origin(hints[f.name]) in (typing.Union, types.UnionType):
            annotation = annotation | None
        help_text = (helps or {}).get(f.name) or docs.get(f.name, "")
        if choices:
            help_text += f" One of: {', '.join(map(str, choices))}."
        params.append(_param(f.name, annotation, default, help_text, (decls or {}).get(f.name, ())))
    return params


def settings_options(model: Any, *, exclude: Iterable[str] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per field of pydantic model ``model`` (a ``BaseSettings`` class).

    Every option defaults to None ("not given": the settings class then reads its environment
    variable, then its own default); the help shows the field's description, its environment
    variable and its default, so the flag documents exactly what the settings will use.
    """
    # lazy: pydantic_core only for settings-derived options
    from pydantic_core import PydanticUndefined

    skip = set(exclude)
    env_prefix = str(model.model_config.get("env_prefix") or "")
    params = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        annotation, choices = _option_type(info.annotation)
        help_text = (info.description or "").rstrip(".")
        help_text = help_text[:1].upper() + help_text[1:] + f" [env {env_prefix}{name.upper()}]."
        if choices:
            help_text += f" One of: {', '.join(map(str, choices))}."
        required = info.default is PydanticUndefined and info.default_factory is None
        shown: bool | str = "required" if required else repr(info.get_default())
        params.append(_param(name, annotation | None, None, help_text, show_default=shown))
    return params


def with_options(*groups: Sequence[inspect.Parameter]) -> Callable[[F], F]:
    """Append derived keyword options to a command taking ``**config``.

    The returned command has every parameter of ``groups`` followed by the function's own ones
    (typer reads the signature); at call time all of them arrive as keyword arguments
    and the derived ones land in the function's ``**config``.
    """

    def wrap(func: F) -> F:
        sig = inspect.signature(func, eval_str=True)
        own = [p.replace(kind=_KW) for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
        params = [p for group in groups for p in group] + own
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise TypeError(f"{func.__name__}: duplicate option names {sorted(names)}")

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            return func(**kwargs)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        del command.__wrapped__  # typer must see this signature, not the function's
        return typing.cast(F, command)

    return wrap


def exits_on_error(func: F) -> F:
    """A command that reports a ``DiscoError`` (bad input, a store or checkpoint that does not
    fit) as one ``error: ...`` line on stderr and exits with status 1, never with a traceback.

    Decorate the command function itself (under :func:`with_options`, which reads its signature
    through ``__wrapped__``).
    """

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DiscoError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return typing.cast(F, command)


def remote_options(*, writes: bool = True) -> list[inspect.Parameter]:
    """``--storage-options JSON`` (and, for commands that write a store, ``--single-writer``):
    the object-storage flags every command that touches data or stores shares
    (``store.remote``); pass the values to :func:`apply_remote_options`."""
    params = [
        _param(
            "storage_options",
            str | None,
            None,
            "fsspec options for s3:// (gs://...) datasets and stores, a JSON object, e.g. "
            '\'{"endpoint_url": "http://127.0.0.1:9000"}\'; over AWS_ENDPOINT_URL(_S3), '
            "AWS_PROFILE, AWS_NO_SIGN_REQUEST [env DISCO_STORAGE_OPTIONS].",
            show_default=False,
        )
    ]
    if writes:
        params.append(
            _param(
                "single_writer",
                bool,
                False,
                "Write a store on object storage (no locks there): you confirm no other process "
                "writes it meanwhile [env DISCO_SINGLE_WRITER].",
            )
        )
    return params


def apply_remote_options(config: dict[str, Any]) -> None:
    """Pop the :func:`remote_options` values from a command's ``config`` and put them in the
    environment (``DISCO_STORAGE_OPTIONS``, ``DISCO_SINGLE_WRITER``), where this process and its
    children (DataLoader workers, ranks) read them. Raises ConfigError for invalid JSON."""
    # here, not at the top: this module imports only the standard library, typer and rich
    from store.remote import export_single_writer, export_storage_options

    export_storage_options(config.pop("storage_options", None))
    export_single_writer(bool(config.pop("single_writer", False)))
