"""Broker plumbing: the only layer that imports aio-pika."""

from . import chord, declare
from .connection import Broker, Outgoing
from .consumer import Delivery

__all__ = ["Broker", "Delivery", "Outgoing", "chord", "declare"]
