"""Broker plumbing: the only layer that imports aio-pika."""

from . import chord, control, declare, revocations
from .connection import Broker, Outgoing
from .consumer import Consumer, Delivery

__all__ = [
    "Broker",
    "Consumer",
    "Delivery",
    "Outgoing",
    "chord",
    "control",
    "declare",
    "revocations",
]
