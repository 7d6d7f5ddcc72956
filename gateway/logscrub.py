"""The last line of defence for secrets in logs: every log line, and every traceback with
it, has the configured secrets replaced before it is written.

The code never logs a token or a key on purpose (it logs redacted ids); this catches the
accidents: an exception whose message quotes a header, an access-log line with a key a
client put in the query string.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .errors import scrub


class SecretScrubber(logging.Filter):
    """A handler filter that rewrites records containing a secret."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the message, its arguments and any traceback text; never drop a record."""
        if not self._secrets:
            return True
        message = record.getMessage()
        cleaned = scrub(message, self._secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self._secrets)
        return True


def install(secrets: Iterable[str]) -> SecretScrubber:
    """Put the scrubber on every handler configured so far (root, uvicorn's, ...)."""
    scrubber = SecretScrubber(secrets)
    loggers = [logging.getLogger()]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if scrubber not in handler.filters:
                handler.addFilter(scrubber)
    return scrubber
