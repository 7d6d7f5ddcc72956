"""uvicorn's httptools protocol with the reading of each request bounded in time and size.

uvicorn bounds the idle gap between requests (`timeout_keep_alive`) but not the reading of
one: a client that sends half a request line and stops holds its socket for good, and a few
thousand such clients use up the process's file limit. Here one clock per connection runs
while the gateway waits on the client for a request:

- the head (request line + headers) must be in within `head_seconds` of the connection
  opening or, on a kept-alive connection, of the next request's first byte (the idle gap
  before that byte stays uvicorn's `timeout_keep_alive`);
- the body must be in within `body_seconds` of the head;
- a head over `max_head_bytes` is answered 431 and the connection closed.

The clock stands still while uvicorn has paused reading (a pipelined request queued behind
another, a body the app has not read yet): that wait is the gateway's, not the client's.
Once a request is read nothing is timed, so an answer may take minutes or stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)

# After a 431 the client may still be sending the rest of its head; closing with those
# bytes unread makes the kernel reset the connection, which can throw the 431 away before
# the client reads it. So the gateway stops writing, reads and drops for this long, then
# closes.
LINGER_SECONDS = 2.0

Phase = Literal["head", "body", "refused"]

_TOO_LARGE = json.dumps(
    {
        "error": {
            "message": "The request's headers are too large.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_header_too_large",
        }
    }
).encode()


@dataclass(frozen=True)
class ReadLimits:
    """How long a client may take to send a request, and how large its head may be."""

    head_seconds: float = 20.0
    body_seconds: float = 60.0
    max_head_bytes: int = 64 * 1024


class _HeadTooLarge(Exception):
    """Raised in a parser callback: the only way to stop httptools mid-request."""


class LightEvent:
    """What uvicorn uses of asyncio.Event (set, clear, is_set, wait), without the deque of
    waiters every asyncio.Event carries: 1,112 bytes with it, 48 without. uvicorn
    makes one per request (a request's body arriving), and every waiting request held it,
    though nothing waits on it once the body is read."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None  # made by the first wait

    def is_set(self) -> bool:
        """As asyncio.Event.is_set."""
        return self._set

    def set(self) -> None:
        """As asyncio.Event.set: wakes every waiter."""
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        """As asyncio.Event.clear."""
        self._set = False

    async def wait(self) -> bool:
        """As asyncio.Event.wait."""
        if self._set:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class _ReadingFlow(FlowControl):
    """uvicorn's flow control, which also stops the clock while reading is paused.

    Its writable event exists only while writing is paused: FlowControl makes one per
    connection up front, about 800 bytes (the Event and its waiters' deque) that every
    waiting request held, for a pause that a fast client never causes."""

    def __init__(self, transport: asyncio.Transport, protocol: BoundedHttpToolsProtocol) -> None:
        # Not FlowControl.__init__, for its Event: the rest of what it sets, as it sets it.
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._protocol = protocol
        self._writable: asyncio.Event | None = None  # None: writable

    async def drain(self) -> None:
        writable = self._writable
        if writable is not None:
            await writable.wait()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            self._writable = asyncio.Event()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            writable, self._writable = self._writable, None
            if writable is not None:
                writable.set()  # wakes the drains waiting on it

    def pause_reading(self) -> None:
        if not self.read_paused:
            self._protocol.hold_clock()
        super().pause_reading()

    def resume_reading(self) -> None:
        paused = self.read_paused
        super().resume_reading()
        if paused:
            self._protocol.run_clock()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose reads are bounded by `limits` (see the module doc)."""

    limits: ClassVar[ReadLimits] = ReadLimits()

    # In slots, not the instance dict: seven more keys grew uvicorn's 27-key dict of each
    # connection from 296 to 1,584 bytes, which every waiting request holds.
    __slots__ = (
        "_clock",
        "_deadline",
        "_fires",
        "_head_bytes",
        "_left",
        "_oversized",
        "_phase",
        "_starts",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase: Phase | None = None  # what the clock is timing; None: nothing
        self._clock: asyncio.TimerHandle | None = None  # None while stopped or held
        self._deadline = 0.0  # loop time the running phase's time is up
        self._fires = 0.0  # loop time the timer fires (a phase before may have set it)
        self._left = 0.0  # seconds it has left while held
        self._starts = 0  # clocks started so far, to tell a head that began mid-read
        self._head_bytes = 0  # bytes of an unfinished head read so far
        self._oversized = False

    # ------------------------------------------------------------------ connection events

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self.flow = _ReadingFlow(transport, self)
        self._start_clock("head")  # a new connection that sends nothing is timed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._oversized:
            return  # lingering after a 431: drop the rest of the head
        if self._phase is None and (self.cycle is None or self.cycle.response_complete):
            # The first bytes after a kept-alive idle gap (uvicorn has just cancelled its
            # idle timer): a request is starting, even if it is only blank lines so far,
            # which llhttp skips without starting a message.
            self._start_clock("head")
        counting = self._starts if self._phase == "head" else None
        super().data_received(data)
        if counting == self._starts and self._phase == "head" and not self.transport.is_closing():
            # The head is still unfinished and this whole read was part of it. httptools
            # buffers a header until its line ends without telling the protocol, so the
            # bytes are counted as they arrive. (The read a head starts in is left out, as
            # it may hold the end of the request before; at most one read goes uncounted.)
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse_head()

    def handle_websocket_upgrade(self) -> None:
        self._stop_clock()  # the websocket protocol takes the connection over
        super().handle_websocket_upgrade()

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "head":
            self._start_clock("head")  # a pipelined request, arriving behind another

    def on_headers_complete(self) -> None:
        # The count in data_received only sees reads after which the head is still
        # unfinished; a head that ends in the read that takes it over the bound is caught here.
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if size > self.limits.max_head_bytes:
            self._oversized = True
            raise _HeadTooLarge  # uvicorn answers parser errors via send_400_response
        self._start_clock("body")
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not before:
            # A new request's cycle, its task not started yet: nothing waits on the event.
            self.cycle.message_event = LightEvent()  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._stop_clock()
        super().on_message_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and self.timeout_keep_alive_task is None
            and not self.transport.is_closing()
        ):
            # The app answered before the body was all in, and each later piece of body
            # cancelled uvicorn's idle timer; nothing would close the idle connection now.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def send_400_response(self, msg: str) -> None:
        if self._oversized:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    # ------------------------------------------------------------------ the clock

    def _start_clock(self, phase: Phase) -> None:
        self._phase = phase
        self._starts += 1
        self._head_bytes = 0
        if phase == "head":
            self._left = self.limits.head_seconds
        else:
            self._left = self.limits.body_seconds if phase == "body" else LINGER_SECONDS
        if self.flow.read_paused:
            self._cancel_timer()  # it runs, with the whole of _left, once reading resumes
        else:
            self.run_clock(restart=True)

    def run_clock(self, restart: bool = False) -> None:
        """Run the clock for the time it has left (reading has resumed; or, with `restart`,
        a new phase has begun).

        A timer that is set already and fires no later than the new deadline is kept (it
        sets itself again for the rest when it fires early): the head's timer then times the
        body too, one timer per request rather than one per phase."""
        if self._phase is None or (self._clock is not None and not restart):
            return
        self._deadline = self.loop.time() + self._left
        if self._clock is not None:
            if self._fires <= self._deadline:
                return
            self._clock.cancel()
        self._fires = self._deadline
        self._clock = self.loop.call_at(self._deadline, self._time_up)

    def hold_clock(self) -> None:
        """Stop the clock, keeping the time it has left (reading is paused)."""
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
            self._left = max(0.0, self._deadline - self.loop.time())

    def _stop_clock(self) -> None:
        self._cancel_timer()
        self._phase = None

    def _cancel_timer(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _time_up(self) -> None:
        self._clock = None
        if self._phase is not None and self.loop.time() < self._deadline:
            # Set for an earlier phase, which ended in time: the rest of this one.
            self._fires = self._deadline
            self._clock = self.loop.call_at(self._deadline, self._time_up)
            return
        cycle = self.cycle
        if self._phase == "body" and cycle is not None and cycle.waiting_for_100_continue:
            # The client rightly waits for a 100 Continue, which uvicorn sends only once
            # the app asks for the body: give it a whole period from about then.
            self._left = self.limits.body_seconds
            self.run_clock()
            return
        if self._phase != "refused":
            log.debug("%s: the request's %s did not arrive in time", self.client, self._phase)
        self._phase = None
        # abort, not close: close would wait to flush a write buffer that a client which
        # has stopped cooperating may never drain.
        self.transport.abort()

    # ------------------------------------------------------------------ 431

    def _refuse_head(self) -> None:
        self._oversized = True
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier pipelined request is still being answered; a 431 now would go out
            # ahead of its response.
            self._stop_clock()
            self.transport.abort()
            return
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(_TOO_LARGE),
            b"connection: close\r\n\r\n",
            _TOO_LARGE,
        ]
        self.transport.write(b"".join(content))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the 431, then end of stream
        self._start_clock("refused")


def protocol_with(chosen: ReadLimits) -> type[BoundedHttpToolsProtocol]:
    """The class to pass uvicorn as `http=`. uvicorn builds the protocol itself, with its
    own arguments, once per connection, so the limits travel on the class."""

    class Configured(BoundedHttpToolsProtocol):
        limits = chosen

    return Configured
