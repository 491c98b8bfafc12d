"""A plain-Python signal: the logic emits, the Qt widget connects (no Qt needed to test the logic)."""
from __future__ import annotations

from typing import Callable


class Signal:
    """Observer list. Callbacks run in the emitter's thread, so the logic emits only from the UI thread."""

    def __init__(self, *argument_names: str):
        self.argument_names = argument_names
        self._callbacks: list[Callable] = []

    def connect(self, callback: Callable) -> None:
        if callback not in self._callbacks:
            self._callbacks.append(callback)

    def disconnect(self, callback: Callable) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def disconnect_all(self) -> None:
        self._callbacks.clear()

    def emit(self, *args) -> None:
        for callback in list(self._callbacks):
            callback(*args)
