"""Images from a DICOMweb server (a PACS such as Orthanc), one series at a time.

`list_series` asks QIDO-RS for the series of each modality, page by page, and keeps only their identifiers, so
an archive of any size is listed without its pixels. `read_series` fetches one series with WADO-RS into a
temporary folder, reads it into a `MedicalImage` (a film, or a volume from its slices) and deletes the folder.
The DICOMweb protocol itself is spoken by the `dicomweb-client` package (installed with the server extras)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import MedAnomalyError
from .image import MedicalImage
from .dicom_series import read_dicom_series

PAGE_SIZE = 500  # series per QIDO request
STUDY_UID, SERIES_UID, MODALITY = "0020000D", "0020000E", "00080060"  # DICOM JSON tags


@dataclass(frozen=True)
class SeriesRef:
    """Where one series lives on the server: all a listing holds, never pixels."""

    study: str
    series: str
    modality: str


def connect(url: str):
    """A DICOMweb client for `url` (e.g. http://pacs:8042/dicom-web)."""
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError:
        raise MedAnomalyError("reading from DICOMweb needs the dicomweb-client package "
                              "(pip install -e .[server], or pip install dicomweb-client)") from None
    return DICOMwebClient(url=url.rstrip("/"))


def _first(entry: dict, tag: str) -> str:
    values = (entry.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def list_series(url: str, modalities: list[str], page_size: int = PAGE_SIZE, client=None) -> list[SeriesRef]:
    """The series of the given modalities, sorted by series UID (so every process sees the same order).

    One query per modality: PACS such as Orthanc do not match a multi-valued Modality."""
    client = client or connect(url)
    found: dict[str, SeriesRef] = {}
    for modality in modalities:
        offset = 0
        while True:
            try:
                page = client.search_for_series(search_filters={"Modality": modality}, offset=offset,
                                                limit=page_size)
            except Exception as error:  # requests' connection and HTTP errors: say where and why
                raise MedAnomalyError(f"DICOMweb server {url} did not list the {modality} series: {error}") from None
            new = 0
            for entry in page:
                series = _first(entry, SERIES_UID)
                if series and series not in found:
                    found[series] = SeriesRef(_first(entry, STUDY_UID), series, _first(entry, MODALITY) or modality)
                    new += 1
            if len(page) < page_size or new == 0:  # the last page (or a server that ignores offset)
                break
            offset += len(page)
    return sorted(found.values(), key=lambda ref: ref.series)


def read_series(ref: SeriesRef, url: str | None = None, client=None) -> MedicalImage:
    """Fetch one series (instances streamed to a temporary folder as they arrive) and read it."""
    client = client or connect(url)
    with tempfile.TemporaryDirectory(prefix="medanomaly-series-") as folder:
        # Ask for the stored transfer syntax: a PACS cannot always transcode (Orthanc: not JPEG 2000), our reader can.
        instances = client.iter_series(ref.study, ref.series, media_types=(("application/dicom", "*"),))
        for index, dataset in enumerate(instances):
            dataset.save_as(Path(folder) / f"{index:05d}.dcm", write_like_original=False)
        image = read_dicom_series(folder)
    image.meta["source"] = f"dicomweb series {ref.series}"
    return image
