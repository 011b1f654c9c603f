"""DRF serializers as agent schemas: normalising declarations, validating, JSON Schema.

An ``Agent`` schema option is a ``Serializer`` subclass or a dict of DRF fields; both become a
serializer class here, so validation and coercion are always DRF's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import fields as f
from rest_framework import serializers

from ..exceptions import InvalidInput

SerializerClass = type[serializers.Serializer]
#: the deepest nesting of objects and lists a schema validates
MAX_DEPTH = 100


def to_serializer(spec: Any, name: str) -> SerializerClass:
    """Return a serializer class for ``spec`` (a Serializer subclass or a dict of fields)."""
    if isinstance(spec, type) and issubclass(spec, serializers.BaseSerializer):
        # passed through as is: the documented contract (and what every caller uses) is a
        # Serializer class; a bare BaseSerializer subclass is not rejected, for compatibility
        return spec  # type: ignore[return-value]
    if isinstance(spec, Mapping):
        bad = [k for k, v in spec.items() if not isinstance(v, f.Field)]
        if bad:
            raise TypeError(f"values must be DRF field instances (bad keys: {', '.join(bad)})")
        # fresh field instances per class: DRF binds fields to their parent
        attrs = {key: _clone(field) for key, field in spec.items()}
        return type(name, (serializers.Serializer,), attrs)
    raise TypeError(
        f"must be a DRF Serializer class or a dict of DRF fields, got {type(spec).__name__}"
    )


def _clone(field: f.Field) -> f.Field:
    args, kwargs = getattr(field, "_args", ()), getattr(field, "_kwargs", {})
    return field.__class__(*args, **kwargs)


def validate(serializer_class: SerializerClass, data: Any, error: type[InvalidInput] = InvalidInput,
             message: str = "Invalid input.", *, label: str | None = None) -> dict[str, Any]:
    """Validate ``data``; return DRF's ``validated_data`` made JSON-safe, or raise ``error``,
    whose ``str()`` names ``label`` ("ChatAgent input") and the failing fields."""
    if not isinstance(data, Mapping):
        raise error({"non_field_errors": ["Expected an object."]}, message, label=label)
    if too_deep(data, MAX_DEPTH):  # DRF (str(), json.dumps) would recurse past the stack
        raise error({"non_field_errors": [f"Nested deeper than {MAX_DEPTH} levels."]}, message,
                    label=label)
    serializer = serializer_class(data=dict(data))
    if not serializer.is_valid():
        raise error(plain_errors(serializer.errors), message, label=label)
    # .data is to_representation(validated_data): dates, decimals and UUIDs become JSON-safe
    return dict(serializer.data)


_names_cache: dict[SerializerClass, frozenset[str]] = {}


def field_names(serializer_class: SerializerClass) -> frozenset[str]:
    """The names of a serializer's fields (instantiating it once per class)."""
    names = _names_cache.get(serializer_class)
    if names is None:
        names = _names_cache[serializer_class] = frozenset(serializer_class().fields)
    return names


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests mappings and lists more than ``limit`` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def plain_errors(errors: Any) -> Any:
    """DRF error details (``ErrorDetail`` strings, nested) as plain JSON-safe values."""
    if isinstance(errors, Mapping):
        return {str(k): plain_errors(v) for k, v in errors.items()}
    if isinstance(errors, (list, tuple)):
        return [plain_errors(v) for v in errors]
    return str(errors)


def json_schema(serializer_class: SerializerClass) -> dict[str, Any]:
    """A JSON Schema (the subset structured outputs accept) for a serializer's fields."""
    return _object_schema(serializer_class())


def _object_schema(serializer: serializers.Serializer) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, field in serializer.fields.items():
        if field.read_only:
            continue
        props[name] = field_schema(field)
        if field.required:
            required.append(name)
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}


def field_schema(field: f.Field) -> dict[str, Any]:
    schema = _field_schema(field)
    if getattr(field, "allow_null", False):
        schema = {"anyOf": [schema, {"type": "null"}]}
    if field.help_text:
        schema["description"] = str(field.help_text)
    return schema


def _field_schema(field: f.Field) -> dict[str, Any]:
    if isinstance(field, serializers.ListSerializer):
        assert field.child is not None  # ListSerializer.__init__ requires a child
        return {"type": "array", "items": field_schema(field.child)}
    if isinstance(field, serializers.Serializer):
        return _object_schema(field)
    if isinstance(field, f.ChoiceField):  # includes MultipleChoiceField
        choices = [str(c) if not isinstance(c, (int, float, bool)) else c for c in field.choices]
        item = {"enum": choices}
        return {"type": "array", "items": item} if isinstance(field, f.MultipleChoiceField) else item
    if isinstance(field, f.BooleanField):
        return {"type": "boolean"}
    if isinstance(field, f.IntegerField):
        return {"type": "integer"}
    if isinstance(field, (f.FloatField, f.DecimalField)):
        return {"type": "number"}
    if isinstance(field, f.ListField):
        return {"type": "array", "items": field_schema(field.child)}
    if isinstance(field, f.DictField):
        return {"type": "object", "additionalProperties": field_schema(field.child)}
    if isinstance(field, (f.JSONField,)):
        return {}
    fmt = {f.EmailField: "email", f.URLField: "uri", f.UUIDField: "uuid",
           f.DateTimeField: "date-time", f.DateField: "date", f.TimeField: "time"}
    for cls, name in fmt.items():
        if isinstance(field, cls):
            return {"type": "string", "format": name}
    return {"type": "string"}
