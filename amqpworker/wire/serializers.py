"""Body serializers, looked up by name or content type.

Each app owns a :class:`SerializerRegistry` (``app.serializers``) with json, msgpack, yaml
and pickle registered. What a worker *accepts* is a separate list (``accept_content``)
checked against the content type before a single byte is decoded, so a pickle body is
never unpickled unless a user listed pickle there on purpose.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import pickle
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import yaml

from ..exceptions import ContentDisallowed, DecodeError, ImproperlyConfigured, MalformedMessage


@dataclass(frozen=True)
class Serializer:
    """How one content type turns Python data into bytes and back."""

    name: str
    content_type: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    content_encoding: str = "utf-8"


class SerializerRegistry:
    """Serializers known to one app, by name and by content type."""

    def __init__(self, serializers: Iterable[Serializer] = ()) -> None:
        self._by_name: dict[str, Serializer] = {}
        self._by_type: dict[str, Serializer] = {}
        for serializer in serializers:
            self.register(serializer)

    def register(self, serializer: Serializer) -> None:
        """Add or replace a serializer; its name and content type both find it."""
        self._by_name[serializer.name] = serializer
        self._by_type[serializer.content_type] = serializer

    def get(self, name_or_type: str) -> Serializer:
        """The serializer for a name (``"json"``) or a content type (``"application/json"``).

        Raises:
            ImproperlyConfigured: when nothing is registered under that name or type.
        """
        found = self._by_name.get(name_or_type) or self._by_type.get(name_or_type)
        if found is None:
            known = ", ".join(sorted(self._by_name))
            raise ImproperlyConfigured(f"unknown serializer {name_or_type!r} (known: {known})")
        return found

    def content_types(self, accept: Iterable[str]) -> frozenset[str]:
        """The content types named by an ``accept_content`` list of names or types."""
        return frozenset(self.get(item).content_type for item in accept)

    def decode(self, body: bytes, content_type: str | None, accepted: frozenset[str]) -> Any:
        """Decode a body, refusing a content type that is not accepted before decoding.

        Raises:
            ContentDisallowed: the content type is missing, unknown or not accepted.
            DecodeError: the serializer could not decode the body.
        """
        if not content_type or content_type not in accepted:
            raise ContentDisallowed(
                f"content type {content_type!r} is not accepted "
                f"(accept_content allows {', '.join(sorted(accepted))})"
            )
        serializer = self._by_type[content_type]
        try:
            return serializer.loads(body)
        except Exception as exc:
            raise DecodeError(f"cannot decode {content_type} body: {exc}") from exc


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """A JSON object from a message body; anything else raises :class:`MalformedMessage`."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what} must be a JSON object")
    return value


def json_default(value: Any) -> Any:
    """JSON for datetimes (ISO 8601), UUIDs, decimals, sets and ranges."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, (set, frozenset, range)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, default=json_default, separators=(",", ":")).encode()


def _msgpack_dumps(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, default=json_default)  # type: ignore[no-any-return]


def _msgpack_loads(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def _yaml_dumps(value: Any) -> bytes:
    return yaml.safe_dump(value).encode()


def _yaml_loads(data: bytes) -> Any:
    return yaml.safe_load(data)


def default_serializers() -> SerializerRegistry:
    """A registry with json, msgpack, yaml and pickle."""
    return SerializerRegistry(
        [
            Serializer("json", "application/json", _json_dumps, json.loads),
            Serializer(
                "msgpack", "application/x-msgpack", _msgpack_dumps, _msgpack_loads, "binary"
            ),
            Serializer("yaml", "application/x-yaml", _yaml_dumps, _yaml_loads),
            Serializer(
                "pickle", "application/x-python-serialize", pickle.dumps, pickle.loads, "binary"
            ),
        ]
    )
