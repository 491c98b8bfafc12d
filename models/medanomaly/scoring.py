"""Batch scoring of an archive: one CSV row per image, resumable, across several processes.

    python -m medanomaly score --checkpoint ae.pt --folder films/ --out scored/
    torchrun --nproc_per_node 4 -m medanomaly score --checkpoint ae.pt --dicomweb http://pacs/dicom-web --out scored/

Sources: a folder (every image file below it), a CSV with an `image` column (paths relative to the CSV; an
optional `slice` column names an axial slice of a volume), or a DICOMweb server (its series of the chosen
modalities, streamed one at a time; see `io.dicomweb`). Listings hold identifiers only, never pixels.

Output: `<out>/scores.csv` with the columns `COLUMNS`, in the source's order. An image that cannot be read or
scored gets a row with its `error` and no score, and the run goes on. `--maps` also writes each anomaly map as
`<out>/maps/<name>.nrrd` on the image's grid (the `map` column names it).

Resume and kill safety: every process appends its rows, one flushed line per image, to `<out>/.parts/rank-N.csv`.
At start and at the end, rank 0 folds the parts into `scores.csv` (written to a temporary file and renamed, so a
reader never sees half of it). A killed run therefore keeps every row it finished (a line torn by the kill is
dropped), and the next run skips the images that already have a row from the same model version. One run
(of one or several processes) per output folder at a time.

Several processes: under `torchrun` (WORLD_SIZE > 1) every rank takes every WORLD_SIZE-th pending image and
scores it on its own GPU (cuda:LOCAL_RANK) when there are GPUs. The ranks only exchange the listing and wait for
each other, so they meet over gloo whatever the device, with a long timeout: an archive takes hours, and a rank
that finishes first waits at the end for the others. The result is the same CSV as one process writes."""
from __future__ import annotations

import csv
import datetime
import hashlib
import io
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from .atomic import atomic_destination
from .errors import ManifestError, MedAnomalyError

COLUMNS = ["id", "score", "is_anomalous", "model_version", "map", "error"]
CSV_NAME, PARTS_DIR, MAPS_DIR = "scores.csv", ".parts", "maps"
# Files a folder listing takes: image formats the reader knows, and names without a suffix (DICOM often has none).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz", ".nrrd",
                  ".nhdr", ".mha", ".mhd")
DICOMWEB_MODALITIES = ("CR", "DX", "MG", "MR")
RANK_TIMEOUT = datetime.timedelta(hours=48)


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Entry:
    """One image of a listing: its id in the CSV and where to read it (a path, or a DICOMweb series)."""

    id: str
    where: object
    slice: int | None = None


class FolderSource:
    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MedAnomalyError(f"folder {self.folder} does not exist")

    def list(self) -> list[Entry]:
        entries = []
        for path in sorted(self.folder.rglob("*")):
            relative = path.relative_to(self.folder)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            name = path.name.lower()
            if name.endswith(IMAGE_SUFFIXES) or "." not in name:
                entries.append(Entry(relative.as_posix(), str(path)))
        return entries

    def read(self, entry: Entry):
        from .io import read_image

        return read_image(entry.where)


class ManifestSource:
    """A CSV with an `image` column; `label` and the other manifest columns may be present and are not used."""

    def __init__(self, csv_path):
        self.csv_path = Path(csv_path)
        if not self.csv_path.is_file():
            raise ManifestError(f"manifest {self.csv_path} does not exist")

    def list(self) -> list[Entry]:
        base = self.csv_path.resolve().parent
        with open(self.csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "image" not in [name.strip() for name in reader.fieldnames or []]:
                raise ManifestError(f"manifest {self.csv_path} has no `image` column; it has {reader.fieldnames}")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        entries = []
        for number, row in enumerate(rows, start=1):
            if not row.get("image"):
                raise ManifestError(f"manifest {self.csv_path} row {number}: empty image path")
            slice_index = None
            if row.get("slice"):
                try:
                    slice_index = int(float(row["slice"]))
                except ValueError:
                    raise ManifestError(f"manifest {self.csv_path} row {number}: slice {row['slice']!r} is not "
                                        "an integer") from None
            path = Path(row["image"])
            entry_id = row["image"] + (f"#slice={slice_index}" if slice_index is not None else "")
            entries.append(Entry(entry_id, str(path if path.is_absolute() else base / path), slice_index))
        return entries

    def read(self, entry: Entry):
        from .data.manifest import Case, load_case

        return load_case(Case(image=Path(entry.where), label=0, slice=entry.slice)).image


class DicomWebSource:
    def __init__(self, url: str, modalities=DICOMWEB_MODALITIES):
        self.url = url
        self.modalities = [m.strip().upper() for m in modalities if m.strip()]
        self._client, self._client_pid = None, None  # one client per process: DataLoader workers fork

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_client_pid": None}

    def client(self):
        from .io.dicomweb import connect

        if self._client is None or self._client_pid != os.getpid():  # never share a parent's open connections
            self._client, self._client_pid = connect(self.url), os.getpid()
        return self._client

    def list(self) -> list[Entry]:
        from .io.dicomweb import list_series

        return [Entry(ref.series, ref) for ref in list_series(self.url, self.modalities, client=self.client())]

    def read(self, entry: Entry):
        from .io.dicomweb import read_series

        return read_series(entry.where, client=self.client())


def open_source(manifest=None, folder=None, dicomweb=None, modalities=DICOMWEB_MODALITIES):
    chosen = [value for value in (manifest, folder, dicomweb) if value]
    if len(chosen) != 1:
        raise MedAnomalyError("give exactly one of a manifest, a folder or a DICOMweb URL to score")
    if manifest:
        return ManifestSource(manifest)
    if folder:
        return FolderSource(folder)
    return DicomWebSource(dicomweb, modalities)


def error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())[:500]  # one line in the CSV


class Reading(Dataset):
    """Images read in DataLoader workers while the model scores the previous ones. A failed read is a
    result too (the error text), so one corrupt file never stops the run."""

    def __init__(self, source, entries: list[Entry]):
        self.source, self.entries = source, entries

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        entry = self.entries[index]
        try:
            return entry, self.source.read(entry), ""
        except Exception as error:  # any reader failure becomes this image's error row
            return entry, None, error_text(error)


def _as_is(sample):
    return sample


# ---------------------------------------------------------------------------------------------- rows on disk


def format_row(row: dict) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        [" ".join(str(row.get(column, "")).split()) for column in COLUMNS])
    return buffer.getvalue()


def read_rows(path: Path) -> list[dict]:
    """Rows of a scores or part file; a last line without its newline (torn by a kill) is left out."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [row for row in rows if row.get("id") and None not in row and all(c in row for c in COLUMNS)]


def open_part(path: Path):
    """Append to this rank's part file, after cutting a line torn by an earlier kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    handle = open(path, "a", encoding="utf-8", newline="")
    if handle.tell() == 0:
        handle.write(",".join(COLUMNS) + "\n")
        handle.flush()
    return handle


def fold_parts(out: Path, order: list[str]) -> list[dict]:
    """Merge scores.csv and the part files into scores.csv (atomically), in `order`; a newer row for an id
    replaces an older one; ids no longer listed stay, after the others. Removes the part files."""
    csv_path, parts = out / CSV_NAME, sorted((out / PARTS_DIR).glob("rank-*.csv"))
    rows = {row["id"]: row for row in read_rows(csv_path)}
    for part in parts:
        rows.update({row["id"]: row for row in read_rows(part)})
    if parts or not csv_path.exists():
        position = {entry_id: index for index, entry_id in enumerate(order)}
        ordered = sorted(rows.values(), key=lambda row: (position.get(row["id"], len(position)), row["id"]))
        with atomic_destination(csv_path) as temporary:
            with open(temporary, "w", encoding="utf-8", newline="") as handle:
                handle.write(",".join(COLUMNS) + "\n")
                handle.writelines(format_row(row) for row in ordered)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, 0o666 & ~_umask())  # a file for people and tools to read, unlike a temporary
        for part in parts:
            part.unlink()
        if (out / PARTS_DIR).is_dir() and not any((out / PARTS_DIR).iterdir()):
            (out / PARTS_DIR).rmdir()
    return list(rows.values())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def map_file_name(entry_id: str) -> str:
    """A file name for an id (a relative path, a UID), unique even where two ids clean up alike."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", entry_id).strip("._")[-80:]
    return f"{readable}-{hashlib.sha1(entry_id.encode()).hexdigest()[:8]}.nrrd"


# ---------------------------------------------------------------------------------------------- processes


class Ranks:
    """This process's place among the `torchrun` processes (one process: rank 0 of 1, nothing to join)."""

    def __init__(self):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.joined = False
        if self.size > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=RANK_TIMEOUT)
            self.joined = True

    def share(self, items: list) -> list:
        return items[self.rank::self.size]

    def from_rank0(self, value):
        if self.size == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def wait_for_all(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, counts: dict) -> dict:
        if self.size == 1:
            return counts
        gathered = [None] * self.size
        dist.all_gather_object(gathered, counts)
        return {key: sum(part[key] for part in gathered) for key in counts}

    def leave(self) -> None:
        if self.joined:
            dist.destroy_process_group()


class Progress:
    """A tqdm bar on a terminal (rank 0); elsewhere one line every `every` images, per rank."""

    def __init__(self, total: int, ranks: Ranks, every: int):
        self.total, self.ranks, self.every = total, ranks, max(1, every)
        self.done = self.errors = 0
        self.started = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and ranks.rank == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="scoring", unit="image")

    def update(self, error: str) -> None:
        self.done += 1
        self.errors += bool(error)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(errors=self.errors)
        elif self.done % self.every == 0 or self.done == self.total:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            where = f" [rank {self.ranks.rank}/{self.ranks.size}]" if self.ranks.size > 1 else ""
            print(f"scoring{where}: {self.done}/{self.total} images, {self.errors} errors, {rate:.2f} images/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------- the run


def score_archive(checkpoint, source, out, *, maps: bool = False, workers: int = 2, device: str | None = None,
                  progress_every: int = 50, retry_errors: bool = False) -> dict:
    """Score every image of `source` not yet in `<out>/scores.csv` for this model version; returns a summary
    (on every rank; the counts are those of all ranks)."""
    from . import load

    out = Path(out)
    ranks = Ranks()
    try:
        if device is None and torch.cuda.is_available() and ranks.size > 1:  # several ranks may share a GPU
            device = f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
        model = load(checkpoint, **({"device": device} if device else {}))
        version = model.model_version
        started = time.perf_counter()

        listing = None
        if ranks.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if maps:
                (out / MAPS_DIR).mkdir(exist_ok=True)
            listing = source.list()
            fold_parts(out, [entry.id for entry in listing])  # what an interrupted run left, before sharing out
        listing = ranks.from_rank0(listing)
        ranks.wait_for_all()

        done = {row["id"] for row in read_rows(out / CSV_NAME)
                if row["model_version"] == version and not (retry_errors and row["error"])}
        pending = [entry for entry in listing if entry.id not in done]
        mine = ranks.share(pending)
        counts = {"scored": 0, "errors": 0}
        loader = DataLoader(Reading(source, mine), batch_size=None, num_workers=workers if mine else 0,
                            collate_fn=_as_is)
        progress = Progress(len(mine), ranks, progress_every)
        with open_part(out / PARTS_DIR / f"rank-{ranks.rank}.csv") as part:
            for entry, image, error in loader:
                row = {"id": entry.id, "model_version": version, "error": error}
                if image is not None:
                    row.update(_score_one(model, entry, image, out if maps else None))
                part.write(format_row(row))
                part.flush()  # a kill from here on keeps this row
                counts["scored"] += 1
                counts["errors"] += bool(row["error"])
                progress.update(row["error"])
        progress.close()

        ranks.wait_for_all()
        if ranks.rank == 0:
            fold_parts(out, [entry.id for entry in listing])
        counts = ranks.sum(counts)
        ranks.wait_for_all()
        seconds = time.perf_counter() - started
        return {"csv": str(out / CSV_NAME), "model_version": version, "images": len(listing),
                "skipped": len(listing) - len(pending), **counts, "processes": ranks.size,
                "seconds": seconds, "images_per_second": counts["scored"] / seconds if seconds > 0 else None}
    finally:
        ranks.leave()


def _score_one(model, entry: Entry, image, maps_out: Path | None) -> dict:
    try:
        result = model.predict(image)
    except Exception as error:  # an image the model refuses (shape, modality...) is reported, the run goes on
        return {"error": error_text(error)}
    row = {"score": repr(float(result.score)), "error": ""}
    anomalous = result.meta.get("is_anomalous")
    row["is_anomalous"] = "" if anomalous is None else str(bool(anomalous)).lower()
    if maps_out is not None:
        from .io import write_image

        name = map_file_name(entry.id)
        try:
            write_image(result.image, maps_out / MAPS_DIR / name, array=result.map)
            row["map"] = f"{MAPS_DIR}/{name}"
        except (OSError, ValueError) as error:
            row["error"] = f"map not written: {error_text(error)}"
    return row
