"""n images from upstream calls: split n into calls each upstream can take, run them on the
pool side by side, ask once more for what came back missing, and shape every image.

It knows neither the OpenAI wire format (api/) nor any provider's JSON (upstreams/).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable

from .errors import DomainError, ModelUnavailable, PartialResult, scrub
from .pool import Pool, Run
from .shape.shaper import Shaper
from .types import ImagesResult, Job, Output, ProducedImage
from .upstreams.base import UpstreamError


def split_count(n: int, per_call: int) -> list[int]:
    """How many images to ask of each upstream call: 10 with a cap of 4 -> [4, 4, 2]."""
    calls = [per_call] * (n // per_call)
    if n % per_call:
        calls.append(n % per_call)
    return calls


def callers_fault(exc: DomainError) -> bool:
    """True when another token or upstream would fail the same way."""
    if isinstance(exc, UpstreamError):
        return exc.kind.callers_fault
    return isinstance(exc, ModelUnavailable)


class FanOut:
    """Makes a job's images on the pool and shapes them."""

    def __init__(
        self, pool: Pool, shaper: Shaper, *, deadline_seconds: float, secrets: Iterable[str]
    ) -> None:
        self._pool = pool
        self._shaper = shaper
        self._deadline_seconds = deadline_seconds
        # Upstream words travel on to callers and other replicas: never with a secret.
        self._secrets = tuple(secrets)

    def calls_for(self, job: Job) -> int:
        """Upstream calls one try at the job takes (what a cached answer saves)."""
        return len(split_count(job.count, self._per_call(job, job.count)))

    def _per_call(self, job: Job, missing: int) -> int:
        """Images one call may ask for, when `missing` are to be asked for. One image takes
        one call whatever the cap: the cap (a look at every candidate upstream) is only
        asked for when there is more than one to split."""
        return max(self._pool.max_count_per_call(job), 1) if missing > 1 else 1

    async def shape(self, link: str, output: Output) -> ProducedImage:
        """One upstream image in the form the answer needs."""
        return await self._shaper.shape(link, output)

    async def make(self, job: Job, output: Output, *, allow_partial: bool) -> ImagesResult:
        """All n images, or (only if allowed) the ones that could be made."""
        result = ImagesResult(images=[])
        made, errors = await self._calls(job, result)
        if len(made) < job.count and (not made or not allow_partial):
            raise _shortfall(job, made, errors, result)
        result.upstreams = [name for _, name in made]
        if len(made) == 1:  # the common case, without a task per image
            result.images = [await self._shaper.shape(made[0][0], output)]
        else:
            result.images = list(
                await asyncio.gather(*(self._shaper.shape(link, output) for link, _ in made))
            )
        return result

    async def _calls(
        self, job: Job, result: ImagesResult
    ) -> tuple[list[tuple[str, str]], list[DomainError]]:
        """(image link, upstream name) for each image made, and the failures on the way.

        Images a successful upstream call did not return (a provider may return fewer
        than asked) are asked for once more. A call that failed is not: the pool has
        already retried it as far as its attempts allow, and a second round would only
        double the calls to a failing provider.
        """
        deadline = time.monotonic() + self._deadline_seconds
        made: list[tuple[str, str]] = []
        errors: list[DomainError] = []
        for _round in range(2):
            missing = job.count - len(made)
            if missing <= 0 or time.monotonic() >= deadline:
                break
            # Asked again each round: a short answer in the first lowers it, so the rest
            # go out as parallel calls an upstream can fill.
            per_call = self._per_call(job, missing)
            calls = [job.with_count(c) for c in split_count(missing, per_call)]
            short = False
            outcomes: list[Run | DomainError]
            if len(calls) == 1:
                # The common case awaited in place: no task, and no coroutine frame more
                # for a waiting request to hold.
                try:
                    outcomes = [await self._pool.run(calls[0], deadline)]
                except DomainError as exc:
                    outcomes = [exc]
            else:
                outcomes = await _gathered([self._pool.run(c, deadline) for c in calls])
            for call, outcome in zip(calls, outcomes, strict=True):
                if isinstance(outcome, DomainError):
                    result.attempts.extend(outcome.attempts)
                    errors.append(self._scrubbed(outcome))
                    continue
                _note(result, outcome)
                made += [(link, outcome.upstream) for link in outcome.result.images]
                if len(outcome.result.images) < call.count:
                    short = True
                    self._pool.answered(outcome, call)
            if not short or any(callers_fault(e) for e in errors):
                break
        return made[: job.count], errors

    def _scrubbed(self, err: DomainError) -> DomainError:
        err.message = scrub(err.message, self._secrets)
        err.args = (err.message,)
        return err


def _shortfall(
    job: Job, made: list[tuple[str, str]], errors: list[DomainError], result: ImagesResult
) -> DomainError:
    """Why a request got fewer images than it asked for: the first failure itself when
    nothing was made (or the caller was at fault), else PartialResult naming it."""
    first = errors[0] if errors else None
    short: DomainError
    if first is not None and (not made or callers_fault(first)):
        short = first
    else:
        short = PartialResult(len(made), job.count, first)
    short.attempts = tuple(result.attempts)
    return short


def _note(result: ImagesResult, run: Run) -> None:
    result.attempts += run.attempts
    if run.result.task_id:
        result.task_ids.append(run.result.task_id)
    if run.result.trace_id:
        result.trace_ids.append(run.result.trace_id)
    if run.result.consumed:
        result.consumed.append(run.result.consumed)


async def _gathered(calls: list[Awaitable[Run]]) -> list[Run | DomainError]:
    """Each call's Run or domain error, side by side, as gather(return_exceptions=True)
    gives them; anything else (a bug, a cancellation) propagates."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, DomainError):
            raise outcome
    return outcomes  # type: ignore[return-value]
