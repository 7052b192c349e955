"""Header tables that can be sent again, whatever a delivery brought.

pamqp decodes a long string that is not valid UTF-8 as ``bytes``, a type it cannot
encode, so a message from a non-Python producer could be received but never published
again: not dead-lettered, not counted, not replayed. :func:`encodable` rewrites such a
table faithfully (raw bytes become an AMQP byte array, which keeps every byte) and says
which headers it had to touch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pamqp import encode

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
