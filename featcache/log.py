"""featcache's diagnostics: the ``featcache`` logger, quiet until a user turns it on.

Every module logs to a child of the ``featcache`` logger (``featcache.cache``,
``featcache.engine.batches``, ...), which has a :class:`logging.NullHandler` and no level of its own,
so nothing is printed unless the application configures logging. What is logged: at INFO, the
device, precision, batch size and workers a run uses, every shard committed, the plan of each
unit of work (inputs, cached, to compute); at WARNING, damaged shards skipped and inputs that
failed under ``on_error="skip"``; at DEBUG, reads retried while shards changed (a concurrent
compact) and configurations remembered or forgotten. Warnings (:mod:`warnings`) stay for what a
user must act on. To see the diagnostics::

    import logging
    logging.basicConfig()                                  # or any handler, e.g. to a file
    logging.getLogger("featcache").setLevel(logging.INFO)  # DEBUG for more

Standard library only: every module, ``featcache.cache`` included, may import it.
"""

from __future__ import annotations

import logging

__all__ = ["LOGGER_NAME", "get_logger"]

#: The name of featcache's root logger.
LOGGER_NAME = "featcache"

logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger of a featcache module: ``get_logger(__name__)`` -> ``featcache.<module>``."""
    if name != LOGGER_NAME and not name.startswith(LOGGER_NAME + "."):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)
