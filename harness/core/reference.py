"""The configuration reference: every key of a config model with its type, default and meaning, read from the
pydantic models themselves, so that docs/config.md cannot drift from the code (a test compares them)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted; ``NAME`` stands for a key the user chooses, ``[]`` for an item of a list
    type: str
    default: str
    description: str


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _type_name(annotation: Any) -> str:
    """A short, readable type: ``float``, ``str or null``, ``fp32 | bf16 | fp16``, ``list of int``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(str(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(the keys below)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [item.model_dump() for item in value]
    return json.dumps(value)


def reference(model: type[BaseModel], prefix: str = "") -> list[KeyDoc]:
    """Every key of ``model``, nested sections flattened to dotted keys, in declaration order."""
    rows: list[KeyDoc] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        nested = _model_of(annotation)
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if nested is not None:
            rows.append(KeyDoc(key, "section", "(the keys below)", field.description or nested.__doc__ or ""))
            rows += reference(nested, f"{key}.")
            continue
        rows.append(KeyDoc(key, _type_name(annotation), _default(field), field.description or ""))
        item = _model_of(args[-1]) if origin in (list, dict) and args else None
        if item is not None:  # a list or mapping of sections (objectives, search spaces)
            rows += reference(item, f"{key}.NAME." if origin is dict else f"{key}[].")
    return rows


def markdown_table(rows: list[KeyDoc]) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        cells = (f"`{row.key}`", row.type, f"`{row.default}`" if row.default != "(the keys below)" else row.default,
                 " ".join(row.description.split()))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
