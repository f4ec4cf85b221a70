"""Drivers for sans-IO operations: each multi-step operation written once, run two ways.

An *operation* is a generator that does its work in plain, non-blocking steps
and, wherever it has to wait (for a kernel process to exit, for a socket to
have a message, for a heartbeat echo), yields a small frozen *wait request*
describing what it waits for; it is resumed with the outcome. Who waits is the
driver's business:

- :func:`drive` serves each request by blocking the calling thread (poll on a
  pidfd or on zmq sockets): the face of KernelManager and BlockingKernelClient;
- :func:`drive_async` serves each request by awaiting in the running asyncio
  loop (``loop.add_reader`` on a pidfd, zmq's asyncio poller): the face of
  AsyncKernelManager and AsyncKernelClient.

So the steps, their order, their error handling and their clean-up exist once,
whatever the face: no second copy, no thread, no nested event loop.

Anything raised while waiting (KeyboardInterrupt, asyncio cancellation, a
failed wait) is thrown into the operation at its ``yield``, so the operation's
own ``except``/``finally`` clauses clean up, and may wait again while doing so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")

#: A sans-IO operation returning T: yields wait requests, is sent their outcomes.
Operation = Generator[Any, Any, T]


def drive(op: Operation[T], serve: Callable[[Any], Any]) -> T:
    """Run ``op`` to completion, serving each wait request with blocking ``serve``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = op.send(value) if error is None else op.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        value, error = None, None
        try:
            value = serve(request)
        except BaseException as e:  # thrown into the operation, which decides
            error = e


async def drive_async(op: Operation[T], serve: Callable[[Any], Awaitable[Any]]) -> T:
    """Run ``op`` to completion, serving each wait request by awaiting ``serve``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = op.send(value) if error is None else op.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        value, error = None, None
        try:
            value = await serve(request)
        except BaseException as e:  # cancellation included: the operation cleans up
            error = e


__all__ = ["Operation", "drive", "drive_async"]
