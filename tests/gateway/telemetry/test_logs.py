"""The log handler: lines logged on the event loop are written after the loop's round, together
and in order; lines from elsewhere at once, after what waits; nothing is lost at flush."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from gateway.telemetry.logs import LineBuffer, log_call

TIMEOUT = 10.0


@contextmanager
def logger_writing_to(stream: io.StringIO, name: str) -> Iterator[logging.Logger]:
    """Logger `name` writing through a LineBuffer to `stream` alone, as it was afterwards."""
    handler = LineBuffer(stream)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger(name)
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers[:], logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    try:
        yield logger
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


async def test_lines_logged_on_the_loop_are_written_after_its_round_in_order() -> None:
    stream = io.StringIO()
    with logger_writing_to(stream, "test.buffered") as logger:
        logger.info("first")  # the handler learns its loop: written at once
        written_at_once = stream.getvalue()
        items = ["a", "b"]
        logger.info("second %s", items)
        items.append("changed later")  # what a line says is what it said when logged
        logger.info("third")
        before_the_round_ended = stream.getvalue()
        done = asyncio.Event()
        asyncio.get_running_loop().call_soon(done.set)  # after the flush scheduled by "second"
        with anyio.fail_after(TIMEOUT):
            await done.wait()
        assert written_at_once == "test.buffered: first\n"
        assert before_the_round_ended == written_at_once
        assert stream.getvalue() == (
            "test.buffered: first\ntest.buffered: second ['a', 'b']\ntest.buffered: third\n"
        )


async def test_a_line_from_another_thread_is_written_at_once_after_the_lines_waiting() -> None:
    stream = io.StringIO()
    with logger_writing_to(stream, "test.threads") as logger:
        logger.info("learns the loop")
        logger.info("waiting")
        thread = threading.Thread(target=logger.info, args=("from a thread",))
        thread.start()
        thread.join(TIMEOUT)
        assert stream.getvalue().splitlines() == [
            "test.threads: learns the loop",
            "test.threads: waiting",
            "test.threads: from a thread",
        ]


async def test_flush_writes_what_waits_and_a_call_line_is_its_fields() -> None:
    stream = io.StringIO()
    with logger_writing_to(stream, "mcpgw.calls") as logger:
        logger.info("learns the loop")
        log_call({"session": "s1", "key": None, "tool": "demo__echo", "ms": 1.5})
        for handler in logger.handlers:
            handler.flush()  # what logging.shutdown does at exit
        assert (
            stream.getvalue().splitlines()[-1] == "mcpgw.calls: call session=s1 key=- tool=demo__echo ms=1.5"
        )
