"""Header tables that can be read and sent again, whatever a producer put in them.

pamqp decodes a long string that is not valid UTF-8 as ``bytes``, a type it cannot
encode, so a message from a non-Python producer could be received but never published
again: not dead-lettered, not counted, not replayed. :func:`encodable` rewrites such a
table faithfully (raw bytes become an AMQP byte array, which keeps every byte) and says
which headers it had to touch.

pamqp decodes nested tables and arrays recursively: a header nested a few thousand
levels deep (25 kB on the wire) raises ``RecursionError`` inside aiormq's frame reader,
which drops the connection, reconnects, gets the same message and drops it again, so
one message stops a worker for good. :func:`guard_deep_tables` makes such a table decode
as a one-entry table saying so; the message then reaches the worker and is
dead-lettered like any other malformed one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pamqp import common, decode, encode

from ..wire.deadletter import UNDECODABLE_HEADERS

#: Added to a message whose headers had to be rewritten: the names that were.
REWRITTEN = "x-amqpworker-rewritten-headers"


def encodable(headers: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The table with every value pamqp can encode; and the names of those rewritten."""
    table: dict[str, Any] = {}
    rewritten: list[str] = []
    for name, value in headers.items():
        try:
            encode.encode_table_value(value)
        except (TypeError, ValueError, OverflowError):
            table[name] = _encodable_value(value)
            rewritten.append(name)
        else:
            table[name] = value
    if rewritten:
        table[REWRITTEN] = list(rewritten)
    return table, rewritten


def _encodable_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, Mapping):
        return encodable({str(key): item for key, item in value.items()})[0]
    if isinstance(value, (list, tuple)):
        return [_encodable_value(item) for item in value]
    try:
        encode.encode_table_value(value)
    except (TypeError, ValueError, OverflowError):
        return repr(value)
    return value


def guard_deep_tables() -> None:
    """Decode a header table too deep for pamqp as ``{UNDECODABLE_HEADERS: why}``.

    Wraps only the outermost table decoder (message properties, method arguments);
    nested tables still use pamqp's own, so a well-formed table costs one extra call.
    """
    original = decode.METHODS["table"]
    if getattr(original, "guarded", False):
        return

    def table(value: bytes) -> tuple[int, common.FieldValue]:
        try:
            return original(value)
        except RecursionError:
            length: int = common.Struct.integer.unpack(value[0:4])[0]
            why = f"a header table of {length} bytes is nested too deeply to decode"
            return length + 4, {UNDECODABLE_HEADERS: why}

    table.guarded = True  # type: ignore[attr-defined]
    decode.METHODS["table"] = table
