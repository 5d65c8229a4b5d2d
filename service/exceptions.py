"""What can go wrong serving a request, in plain Python; `service.errors` maps it onto HTTP."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service cannot serve; `param` names the request field at fault, if any."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(ServiceError):
    """The request is malformed or asks for something out of range."""


class UnknownModelError(ServiceError):
    """The request names a model that is not loaded."""


class NotRecordedError(ServiceError):
    """The model's checkpoint lacks what the request asks about (its training timeline)."""


class NotReadyError(ServiceError):
    """The models are not loaded (yet, or any more)."""


class OverloadedError(ServiceError):
    """Every generation slot is busy and the waiting queue is full: retry shortly."""

    retry_after_seconds = 1


class ClientBusyError(ServiceError):
    """The client already has as many sequences generating as it may: retry when some end."""

    retry_after_seconds = 1


class GenerationFailedError(ServiceError):
    """Generation failed on the server's side (the model or the device, or this request's
    own work); the message says what failed."""


class GenerationTimeoutError(ServiceError):
    """The request timeout passed before the generation produced any token."""


class NoModelsLoadedError(RuntimeError):
    """Startup found no checkpoint it could load: the service refuses to start."""
