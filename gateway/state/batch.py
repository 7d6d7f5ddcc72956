"""Lua scripts sent to Redis in as few round trips as the traffic allows.

Every request runs one script to take its limits and one to settle them. Sent one by one,
that is two round trips per request, each with its own connection checkout, write and
read. Here the calls that arrive while a round trip is out wait for it and then all go
together in the next one, in one pipeline (as ioredis' auto-pipelining does): a lone
request still costs its round trips, but under load many requests share each one. Each
script is atomic on its own, and a pipeline keeps their order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from .redis import RedisLink, SharedUnavailable

log = logging.getLogger("gateway.redis")

# A script and its keys and arguments.
Call = tuple[AsyncScript, Sequence[str], Sequence[str]]


async def run_scripts(redis: Redis, calls: Sequence[Call]) -> list[Any]:
    """The scripts in one pipeline, by digest (redis-py would ask SCRIPT EXISTS first on
    every pipeline); each reply, or the error it raised. A Redis that lost its scripts
    (restarted) is given them, and only the calls it refused for that are sent again:
    the others have run, and a limit taken twice would be wrong."""
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in (1, 2):
        pipe = redis.pipeline(transaction=False)
        for i in todo:
            script, keys, args = calls[i]
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        answers = await pipe.execute(raise_on_error=False)
        missing = []
        for i, answer in zip(todo, answers, strict=True):
            replies[i] = answer
            if isinstance(answer, NoScriptError):
                missing.append(i)
        if not missing or attempt == 2:
            break
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            await redis.script_load(script.script)
        todo = missing
    return replies


class ScriptBatcher:
    """Runs scripts through the link, the ones that arrive together in one round trip."""

    def __init__(self, link: RedisLink, operation: str) -> None:
        self._link = link
        self._operation = operation
        self._queue: list[tuple[Call, asyncio.Future[Any]]] = []
        self._sending = False
        self.round_trips = 0
        self.calls = 0

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str]) -> Any:
        """The script's reply; SharedUnavailable when Redis cannot be used."""
        if not self._link.available:
            raise SharedUnavailable(self._operation)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(((script, keys, args), done))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send())
        return await done

    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                calls = [call for call, _ in batch]
                self.round_trips += 1
                self.calls += len(calls)
                try:
                    replies = await self._link.call(
                        self._operation, functools.partial(run_scripts, self._link.redis, calls)
                    )
                except SharedUnavailable:
                    replies = [SharedUnavailable(self._operation)] * len(batch)
                except Exception:  # never leave a caller waiting on a future nobody sets
                    log.exception("sending Redis scripts failed")
                    replies = [SharedUnavailable(self._operation)] * len(batch)
                for (_call, done), reply in zip(batch, replies, strict=True):
                    if done.done():
                        continue
                    if isinstance(reply, SharedUnavailable):
                        done.set_exception(reply)
                    elif isinstance(reply, RedisError):
                        # A script that fails is a bug, not a reason to fail the request.
                        log.error("Redis script failed: %s", reply)
                        done.set_exception(SharedUnavailable(self._operation))
                    else:
                        done.set_result(reply)
        finally:
            self._sending = False
