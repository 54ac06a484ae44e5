"""The server stopping, as the responses that would otherwise never end see it.

uvicorn stops in order: it stops accepting connections, waits for every response in progress
to finish, and only then runs the app's lifespan shutdown (which records every session's end).
A session's GET stream, a 2026-07-28 listen stream and a legacy `/sse` stream finish only when
the host goes away, so one open stream kept uvicorn waiting for good. The server says when it
begins to stop (`mcpgw serve` does, in `cli/serve.py`); these streams then end as HTTP responses
end, and `app.py` gives calls in flight a short grace before it ends their sessions, which a
second Ctrl+C cuts short.
"""

from __future__ import annotations

import anyio

__all__ = ["Shutdown"]


class _Once:
    """A moment that happens once. It is made before the event loop runs (the server is built
    first), and an event needs the loop, so the event is made by the first waiter."""

    __slots__ = ("_event", "happened")

    def __init__(self) -> None:
        self.happened = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        self.happened = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self.happened:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class Shutdown:
    """Begun by the server when it starts to stop, hurried if asked to stop again; awaited by
    long-lived streams (`wait`) and by what ends the sessions (`grace`)."""

    __slots__ = ("_begun", "_hurried")

    def __init__(self) -> None:
        self._begun = _Once()
        self._hurried = _Once()

    @property
    def begun(self) -> bool:
        return self._begun.happened

    def begin(self) -> None:
        self._begun.set()

    def hurry(self) -> None:
        """Stop without waiting for calls in flight."""
        self._begun.set()
        self._hurried.set()

    async def wait(self) -> None:
        """Until the server begins to stop."""
        await self._begun.wait()

    async def grace(self, seconds: float) -> None:
        """`seconds` for calls in flight to finish, or less if hurried."""
        with anyio.move_on_after(seconds):
            await self._hurried.wait()
