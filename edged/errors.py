"""One error hierarchy for the whole daemon, mapped to gRPC status codes once, at the boundary."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    DATA_LOSS = "data_loss"
    INTERNAL = "internal"


class EdgedError(Exception):
    """An error with a message a person can act on and a transport-neutral code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(EdgedError):
    code = ErrorCode.INVALID_ARGUMENT


class ManifestError(EdgedError):
    code = ErrorCode.INVALID_ARGUMENT


class StoreError(EdgedError):
    code = ErrorCode.FAILED_PRECONDITION


class NotFoundError(EdgedError):
    code = ErrorCode.NOT_FOUND


class InvalidInputError(EdgedError):
    code = ErrorCode.INVALID_ARGUMENT


class UnavailableError(EdgedError):
    code = ErrorCode.UNAVAILABLE


class RuntimeLoadError(EdgedError):
    code = ErrorCode.FAILED_PRECONDITION


class RejectedError(EdgedError):
    """Refused input from the outside (a patch, a pushed update, a signature); ``reason`` is a
    short label for the edged_patches_rejected metric."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, reason: str, code: ErrorCode | None = None) -> None:
        super().__init__(message, code)
        self.reason = reason
