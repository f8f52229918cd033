"""The one error tree of infermcp.

Every failure the engine or a front end reports is an :class:`InferError`. Front ends map
this tree once: HTTP to the OpenAI error envelope, MCP to a tool error result::

    InferError                      500  server_error
    ├── InvalidRequestError         400  invalid_request_error
    │   ├── ContextLengthError      400  code=context_length_exceeded
    │   └── ModelKindError          400  code=model_not_supported (chat sent to an encoder...)
    ├── ModelNotFoundError          404  code=model_not_found
    ├── NotFoundError               404  (a named object that does not exist)
    │   └── ResponseNotFoundError   404  code=response_not_found / previous_response_not_found
    ├── RequestTooLargeError        413  code=request_too_large
    ├── OverloadedError             429  type=requests, code=rate_limit_exceeded (+ Retry-After)
    ├── EngineUnavailableError      503  (loading, dead model thread, shutting down)
    ├── StorageError                500  the response store failed (exit code 2 at startup)
    ├── RequestTimeoutError         504  code=request_timeout (--request-timeout passed)
    └── ModelLoadError              startup only: a missing or broken model path
"""

from __future__ import annotations


class InferError(Exception):
    """Base class; carries what the OpenAI envelope needs."""

    status_code: int = 500
    error_type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(InferError):
    """The request is malformed or asks for something this server cannot do."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    """The prompt (plus the room reserved for generation) does not fit the model's context."""

    def __init__(self, message: str, *, param: str | None = "messages") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class ModelKindError(InvalidRequestError):
    """The `model` field names a served model of the wrong kind for this endpoint."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="model_not_supported")


class ModelNotFoundError(InferError):
    """The `model` field names no served model."""

    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="model_not_found")


class NotFoundError(InferError):
    """A named object (a stored response, say) does not exist."""

    status_code = 404
    error_type = "invalid_request_error"


class ResponseNotFoundError(NotFoundError):
    """No stored response has this id (never stored, ``store: false``, expired or deleted)."""

    def __init__(self, response_id: str, *, param: str | None = None) -> None:
        previous = param == "previous_response_id"
        super().__init__(f"{'Previous response' if previous else 'Response'} with id "
                         f"'{response_id}' not found.", param=param,
                         code="previous_response_not_found" if previous else "response_not_found")


class RequestTooLargeError(InferError):
    """The request body (or one of its parts) is over a size limit."""

    status_code = 413
    error_type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="request_too_large")


class OverloadedError(InferError):
    """The server is at capacity (its queue is full); the client may retry after ``retry_after``
    seconds. Shaped like OpenAI's requests-per-minute 429."""

    status_code = 429
    error_type = "requests"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, code="rate_limit_exceeded")
        self.retry_after = retry_after


class EngineUnavailableError(InferError):
    """The engine cannot take work: still loading, shutting down, or its thread died."""

    status_code = 503
    error_type = "server_error"


class StorageError(InferError):
    """The response store cannot be opened, read or written."""


class RequestTimeoutError(InferError):
    """A request waited and ran longer than the server's ``--request-timeout``.

    504, not 408: 408 tells a client it was too slow sending its request, while here the engine
    behind the HTTP layer did not answer in time; clients (the ``openai`` SDK) retry 5xx.
    """

    status_code = 504
    error_type = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="request_timeout")


class ModelLoadError(InferError):
    """A model path is missing or cannot be loaded (reported at startup, exit code 2)."""
