"""Say a retried failure once, not every few seconds.

A node that retries something every few seconds (its certificate upkeep, reading the list of fogs)
would log the same line thousands of times a day, and a hospital's IT team would learn to ignore it. A
``Repeats`` logs a message at its level the first time and again only when it changes; repeats go to
DEBUG. After a success, ``clear`` makes the next failure be said again.
"""

from __future__ import annotations

import logging


class Repeats:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._last: str | None = None

    def say(self, level: int, message: str) -> None:
        """Log ``message`` at ``level`` unless it is the same as the last one said (then at DEBUG)."""
        if message == self._last:
            self.logger.debug("%s (again)", message)
            return
        self._last = message
        self.logger.log(level, "%s", message)

    def clear(self) -> None:
        """The retried thing worked: say the next failure again, even if it is the same as before."""
        self._last = None
