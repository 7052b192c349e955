"""Wire format: pure data in and out of bytes. No I/O, no broker, no app."""

from . import deadletter
from .message import PROTOCOL_HEADER, PROTOCOL_VERSION, Envelope, TaskMessage
from .results import ResultMessage
from .serializers import Serializer, SerializerRegistry, default_serializers

__all__ = [
    "PROTOCOL_HEADER",
    "PROTOCOL_VERSION",
    "Envelope",
    "ResultMessage",
    "Serializer",
    "SerializerRegistry",
    "TaskMessage",
    "deadletter",
    "default_serializers",
]
