"""Beat: periodic tasks, with any number of schedulers and exactly one firing.

See docs/beat.md. It publishes tasks like any caller; a worker runs them.
"""

from .entries import Entry, load_entries
from .listing import describe
from .service import Beat

__all__ = ["Beat", "Entry", "describe", "load_entries"]
