"""Typed errors the panel shows as messages (never as tracebacks)."""
from __future__ import annotations


class MedAnomalyError(Exception):
    """Base class: `str(error)` is a sentence fit for a message box."""


class ServerError(MedAnomalyError):
    """The server answered with an HTTP error; `message` is the server's own explanation."""

    def __init__(self, message: str, status: int | None = None, url: str = ""):
        self.message = message
        self.status = status
        self.url = url
        prefix = f"Server error {status}" if status else "Server error"
        super().__init__(f"{prefix}: {message}")


class ServerUnreachable(ServerError):
    """No HTTP answer at all: wrong URL, server not started, network down, timeout."""

    def __init__(self, message: str, url: str = ""):
        super().__init__(message, None, url)
        Exception.__init__(self, f"Cannot reach the server at {url}: {message}")


class VolumeFormatError(MedAnomalyError):
    """A volume file that cannot be read or written (unsupported NRRD feature, wrong shape)."""


class JobCancelled(MedAnomalyError):
    """Raised inside a job when the user pressed Cancel."""

    def __init__(self, message: str = "Cancelled by the user"):
        super().__init__(message)
