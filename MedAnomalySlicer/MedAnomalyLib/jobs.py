"""Long calls off the UI thread: a worker thread with progress, cancel flag, result and error.

The widget starts a `Job` and polls it with a QTimer (as SlicerMONAIAuto3DSeg does), so no Qt object is touched
from the worker thread and the logic can be tested without Qt.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from .errors import JobCancelled, MedAnomalyError


@dataclass(frozen=True)
class JobState:
    """A consistent snapshot of a job, safe to read from the UI thread."""

    name: str
    fraction: float
    message: str
    done: bool
    cancelled: bool
    error: str | None
    result: Any


class JobContext:
    """Handed to the work function: report progress, and stop early when the user cancels."""

    def __init__(self, job: "Job"):
        self._job = job

    def report(self, fraction: float | None = None, message: str | None = None) -> None:
        self.check_cancelled()
        self._job._set_progress(fraction, message)

    def check_cancelled(self) -> None:
        if self._job.cancel_requested:
            raise JobCancelled()

    @property
    def cancel_requested(self) -> bool:
        return self._job.cancel_requested

    def sleep(self, seconds: float) -> None:
        """Wait between server polls, waking up early on cancel."""
        if self._job._cancel_event.wait(seconds):
            raise JobCancelled()


class Job:
    """Runs `work(context)` in a daemon thread. Errors are kept as messages, never re-raised in the UI thread."""

    def __init__(self, name: str, work: Callable[[JobContext], Any]):
        self.name = name
        self._work = work
        self._lock = threading.Lock()
        self._cancel_event = threading.Event()
        self._fraction = 0.0
        self._message = "Waiting"
        self._done = threading.Event()
        self._cancelled = False
        self._error: str | None = None
        self._exception: BaseException | None = None
        self._result: Any = None
        self._thread = threading.Thread(target=self._run, name=f"MedAnomaly-{name}", daemon=True)

    def start(self) -> "Job":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel_event.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_event.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def exception(self) -> BaseException | None:
        return self._exception

    def state(self) -> JobState:
        with self._lock:
            return JobState(self.name, self._fraction, self._message, self._done.is_set(), self._cancelled,
                            self._error, self._result)

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job ends (for tests and scripts; the widget polls `state()` instead)."""
        self._done.wait(timeout)
        return self.state()

    def result(self, timeout: float | None = None) -> Any:
        """The work's return value; raises the job's own typed error when it failed."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.name} did not finish within {timeout} s")
        if self._exception is not None:
            raise self._exception
        return self._result

    def _set_progress(self, fraction: float | None, message: str | None) -> None:
        with self._lock:
            if fraction is not None:
                self._fraction = min(max(float(fraction), 0.0), 1.0)
            if message is not None:
                self._message = message

    def _run(self) -> None:
        started = time.monotonic()
        self._set_progress(0.0, f"{self.name}: started")
        try:
            result = self._work(JobContext(self))
        except JobCancelled as error:
            self._finish(cancelled=True, error=None, exception=error, message=f"{self.name}: cancelled")
        except MedAnomalyError as error:
            self._finish(error=str(error), exception=error, message=f"{self.name}: failed")
        except Exception as error:  # an unexpected bug still reaches the user as one line, and the log in full
            traceback.print_exc()
            self._finish(error=f"{type(error).__name__}: {error}", exception=error, message=f"{self.name}: failed")
        else:
            with self._lock:
                self._result = result
            self._finish(fraction=1.0, message=f"{self.name}: done in {time.monotonic() - started:.1f} s")

    def _finish(self, *, cancelled=False, error=None, exception=None, fraction=None, message=""):
        with self._lock:
            self._cancelled = cancelled
            self._error = error
            self._exception = exception
            if fraction is not None:
                self._fraction = fraction
            self._message = message
        self._done.set()


def run_job(name: str, work: Callable[[JobContext], Any]) -> Job:
    return Job(name, work).start()
