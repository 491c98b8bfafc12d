"""Float maps of recent inferences, kept on the server so that a client can fetch the heatmap (and extras such as
the aleatoric uncertainty) after the labelmap: GET /medanomaly/maps/{result_id}/{name}.nrrd.

An inference hands its maps to one writer thread, which stores each as raw float32 (.npy) with the image's
geometry after the answer has gone out; a request for a map not written yet waits for it. The compressed NRRD
(hundreds of milliseconds for a full-size film) is made on the first request for it, so only clients that show
the heatmap pay for it. Kept in a folder outside the datastore, pruned to the latest `keep`
results and at most `ttl_minutes` old."""
from __future__ import annotations

import json
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medanomaly.io import MedicalImage, write_image

RESULT_ID = re.compile(r"^[0-9a-f]{32}$")
MAP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
GEOMETRY = "geometry.json"
PRUNE_EVERY = 20  # saves between two prunings (a pruning lists and stats every kept result)


class ResultStore:
    def __init__(self, folder: Path, keep: int = 200, ttl_minutes: float = 60.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.ttl = ttl_minutes * 60.0
        self._lock = threading.Lock()
        self._saved = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maps")
        self._pending: dict[str, Future] = {}

    def save(self, image: MedicalImage, maps: dict[str, np.ndarray]) -> tuple[str, dict[str, str]]:
        """Keep each float map of one result (written by the writer thread); returns the result id and
        {name: relative URL of its NRRD}."""
        result_id = uuid.uuid4().hex
        maps = {name: array for name, array in maps.items() if MAP_NAME.match(name)}
        geometry = {"spacing": image.spacing, "origin": image.origin, "direction": image.direction}
        with self._lock:
            self._pending[result_id] = self._writer.submit(self._write, result_id, geometry, maps)
        return result_id, {name: f"/medanomaly/maps/{result_id}/{name}.nrrd" for name in maps}

    def _write(self, result_id: str, geometry: dict, maps: dict[str, np.ndarray]) -> None:
        staging = self.folder / f".{result_id}.partial"
        staging.mkdir()
        try:
            (staging / GEOMETRY).write_text(json.dumps(geometry), encoding="utf-8")
            for name, array in maps.items():
                np.save(staging / f"{name}.npy", np.asarray(array, dtype=np.float32))
            staging.rename(self.folder / result_id)  # a result appears whole or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            with self._lock:
                self._pending.pop(result_id, None)
        self._saved += 1
        if self._saved % PRUNE_EVERY == 1:
            self.prune()

    def _written(self, result_id: str) -> None:
        """Wait until the writer thread has stored this result (a failed write shows as a missing result)."""
        with self._lock:
            pending = self._pending.get(result_id)
        if pending is not None:
            pending.exception()

    def path(self, result_id: str, name: str) -> Path | None:
        """The map as NRRD on the source image's grid (written on first request), or None if there is none."""
        if not RESULT_ID.match(result_id) or not MAP_NAME.match(name):
            return None
        self._written(result_id)
        folder = self.folder / result_id
        nrrd, raw = folder / f"{name}.nrrd", folder / f"{name}.npy"
        with self._lock:
            if not nrrd.is_file():
                if not raw.is_file():
                    return None
                geometry = json.loads((folder / GEOMETRY).read_text(encoding="utf-8"))
                array = np.load(raw)
                write_image(MedicalImage(array, **geometry), nrrd, array)  # atomic
        return nrrd

    def names(self, result_id: str) -> list[str] | None:
        if RESULT_ID.match(result_id):
            self._written(result_id)
        if not RESULT_ID.match(result_id) or not (self.folder / result_id).is_dir():
            return None
        return sorted(p.stem for p in (self.folder / result_id).glob("*.npy"))

    def prune(self) -> None:
        with self._lock:
            now = time.time()
            entries = sorted((p for p in self.folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                             reverse=True)
            for index, entry in enumerate(entries):
                age = now - entry.stat().st_mtime
                stale_partial = entry.name.startswith(".") and age > 600
                if stale_partial or (not entry.name.startswith(".") and (index >= self.keep or age > self.ttl)):
                    shutil.rmtree(entry, ignore_errors=True)
