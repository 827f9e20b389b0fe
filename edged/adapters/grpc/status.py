"""EdgedError -> gRPC status, in one place."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from edged.errors import EdgedError, ErrorCode

log = logging.getLogger(__name__)

STATUS = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.ABORTED: grpc.StatusCode.ABORTED,
    ErrorCode.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    ErrorCode.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

# A status message travels in a trailer: clients refuse metadata past 8 KiB by default, and an
# error naming 10,000 tensors would be 88 KB.
MAX_MESSAGE_CHARS = 2000


def bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    cut = len(message) - MAX_MESSAGE_CHARS
    return f"{message[:MAX_MESSAGE_CHARS]}... ({cut} more characters)"


R = TypeVar("R")
Method = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str
) -> NoReturn:
    """End the call with the status and message of an EdgedError; never leak a traceback."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # the handler ended the call itself
    if isinstance(exc, EdgedError):
        # An expected refusal needs no traceback, and its frames would keep the request's
        # parsed message and tensors alive in a reference cycle until a full collection
        # (hundreds of MB after a burst of large refused requests).
        exc.__traceback__ = None
        await context.abort(STATUS[exc.code], bounded(exc.message))
    log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the daemon's log")


def mapped_errors(fn: Method[R]) -> Method[R]:
    """Wrap a handler so that its errors end the call as ``abort`` does."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await abort(context, exc, fn.__name__)

    return wrapper
