"""The two datastores of the app: a local folder whose index is written atomically, and a DICOMweb PACS listed by
several modalities, whose film labels go back to the PACS as DICOM SEG written with highdicom."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom import Dataset, dcmread

from medanomaly.atomic import atomic_destination
from medanomaly.io import read_image, write_image

from .film_seg import film_seg, read_film_seg

logger = logging.getLogger(__name__)
LISTING_SECONDS = 60  # how long a DICOMweb series listing is reused


class AtomicLocalDatastore(LocalDatastore):
    """LocalDatastore whose index file is replaced atomically: a server killed while saving a label leaves the
    previous index or the new one, never half a file (which would lose every label's record)."""

    def _update_datastore_file(self, lock=True):
        def write():
            self._ignore_event_config = True
            payload = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            with atomic_destination(self._datastore_config_path) as temporary:
                temporary.write_text(payload, encoding="utf-8")
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


class ModalitiesDICOMWebDatastore(DICOMWebDatastore):
    """DICOMweb datastore listing the series of several modalities (one QIDO query each: PACS such as Orthanc do not
    match a multi-valued Modality), refreshed every minute rather than every two hours."""

    def __init__(self, client, modalities: list[str], **kwargs):
        super().__init__(client, search_filter={"Modality": modalities[0] if modalities else "CR"}, **kwargs)
        self._modalities = modalities
        self._listed: tuple[float, list[str]] = (0.0, [])

    def list_images(self):
        stamp, series = self._listed
        if time.monotonic() - stamp > LISTING_SECONDS:
            found = []
            for modality in self._modalities:
                for dataset in self._client.search_for_series(search_filters={"Modality": modality}):
                    uid = str(Dataset.from_json(dataset)["SeriesInstanceUID"].value)
                    if uid not in found:
                        found.append(uid)
            self._listed = (time.monotonic(), found)
            series = found
        return list(series)

    def get_image_uri(self, image_id):
        """The series folder (downloaded once), recorded in the local index so that labels can be kept for it."""
        uri = super().get_image_uri(image_id)
        if not self._convert_to_nifti and image_id not in self._datastore.objects:
            try:
                info = self._dicom_info(image_id)
            except Exception:  # the listing already worked; the details are optional
                info = {"SeriesInstanceUID": image_id}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=""))
            self._update_datastore_file()
        return uri

    def get_label_uri(self, label_id, label_tag, image_id=""):
        """A label kept on this server is read from here; a film's final label is read from its SEG in the PACS,
        on the film's grid; anything else as MONAI Label does."""
        image_id = image_id or label_id
        obj = self._datastore.objects.get(image_id)
        if obj is not None and obj.labels.get(label_tag) is not None:
            return LocalDatastore.get_label_uri(self, image_id, label_tag)
        if label_tag == DefaultLabelTag.FINAL and image_id in self.list_images():  # listing refreshes from the PACS
            self.get_image_uri(image_id)  # fetches the series from the PACS if it is not here yet
            film = self._single_film(image_id)
            seg = self._pacs_seg_of(image_id, film) if film is not None else None
            if seg is not None:
                source = read_image(film)
                mask = read_film_seg(seg, source.meta.get("sop_instance_uid"))
                folder = Path(self._datastore.label_path(label_tag))
                folder.mkdir(parents=True, exist_ok=True)
                return str(write_image(source, folder / f"{image_id}.nii.gz", mask.reshape(source.shape)))
        return super().get_label_uri(label_id, label_tag, image_id)

    def _pacs_seg_of(self, image_id: str, film: Path):
        """The newest DICOM SEG instance in the PACS that references the series `image_id`, or None. A SEG lives
        in its film's study, so only that study's SEG series are looked at."""
        study_uid = str(dcmread(film, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
                        .StudyInstanceUID)
        found = None
        for dataset in self._client.search_for_series(study_instance_uid=study_uid,
                                                      search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(dataset)
            study, series = str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID)
            meta = Dataset.from_json(self._client.retrieve_series_metadata(study, series)[0])
            referenced = meta.get("ReferencedSeriesSequence")
            if referenced and str(referenced[0].SeriesInstanceUID) == image_id:
                stamp = (str(meta.get("SeriesDate", "")), str(meta.get("SeriesTime", "")))
                if found is None or stamp >= found[0]:
                    found = (stamp, study, series)
        if found is None:
            return None
        return self._client.retrieve_series(found[1], found[2])[0]

    def get_labeled_images(self, label_tag=None, labels=None):
        """Labelled in the PACS (a DICOM SEG) or on this server (a label kept here)."""
        local = LocalDatastore.get_labeled_images(self, label_tag or "final", labels)
        return sorted(set(super().get_labeled_images(label_tag, labels)) | set(local))

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return sorted(set(self.list_images()) - set(self.get_labeled_images(label_tag, labels)))

    def _single_film(self, image_id: str) -> Path | None:
        """The one DICOM file of a single-instance series (a CR/DX/MG film), else None."""
        folder = Path(self._datastore.image_path()) / image_id
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        return files[0] if len(files) == 1 else None

    def save_label(self, image_id, label_filename, label_tag, label_info, label_id=""):
        """A final label goes back to the PACS as a DICOM SEG: a film's with highdicom (it takes a single-frame
        source without a frame of reference), a volume's with dcmqi (MONAI Label's way). A label the PACS cannot
        take is kept on this server, and said so in its label info."""
        if label_tag != DefaultLabelTag.FINAL:
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        self.get_image_uri(image_id)
        film = self._single_film(image_id)
        try:
            if film is None:
                return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
            seg = film_seg(film, read_image(label_filename))
            self._client.store_instances([seg])
            info = {**(label_info or {}), "SeriesInstanceUID": str(seg.SeriesInstanceUID),
                    "StudyInstanceUID": str(seg.StudyInstanceUID), "dicom_seg": "stored in the PACS"}
        except Exception as error:
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            logger.warning(f"label of {image_id} kept on the server only: no DICOM SEG could be stored ({reason})")
            info = {**(label_info or {}), "dicom_seg": f"not stored in the PACS: {reason}"}
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, info)

