"""Domain errors as the caller sees them: the API layer's one table applied in tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from gateway.api.errors import OpenAIError, openai_error
from gateway.errors import DomainError


@dataclass
class Answered:
    """Filled once the block has raised: the OpenAI error the caller would get."""

    value: OpenAIError | None = None  # type: ignore[assignment]


@contextmanager
def raises_openai_error() -> Iterator[Answered]:
    """Like pytest.raises(DomainError), with `.value` the OpenAI error it is answered as."""
    answered = Answered()
    with pytest.raises(DomainError) as info:
        yield answered
    answered.value = openai_error(info.value)
