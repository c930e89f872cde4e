"""engram_store errors: one class per gRPC status code, carrying the
server's message. ``except engram_store.Error`` catches them all."""


class Error(Exception):
    """A call engram-store refused or could not complete."""
    code = 2  # UNKNOWN

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class CancelledError(Error):
    code = 1


class UnknownError(Error):
    code = 2


class InvalidArgumentError(Error, ValueError):
    code = 3


class DeadlineExceededError(Error, TimeoutError):
    code = 4


class NotFoundError(Error, KeyError):
    code = 5

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class AlreadyExistsError(Error):
    code = 6


class PermissionDeniedError(Error, PermissionError):
    code = 7


class ResourceExhaustedError(Error):
    code = 8


class FailedPreconditionError(Error):
    code = 9


class AbortedError(Error):
    code = 10


class OutOfRangeError(Error):
    code = 11


class UnimplementedError(Error):
    code = 12


class InternalError(Error):
    code = 13


class UnavailableError(Error, ConnectionError):
    code = 14


class DataLossError(Error):
    code = 15


class UnauthenticatedError(Error):
    code = 16


_BY_CODE = {cls.code: cls for cls in Error.__subclasses__()}


def from_status(code: int, message: str) -> Error:
    """The exception for a gRPC status code and message."""
    return _BY_CODE.get(code, UnknownError)(message)
