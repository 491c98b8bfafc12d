"""MedAnomaly MONAI Label app: every model of the `medanomaly` registry served, trained on the datastore, ranked
for active learning and scored, with checked inputs and the float anomaly maps available to clients.

Conf options (`--conf key value`), all optional:
  models             comma-separated model names to serve (default: all registered)
  model_dir          where checkpoints and training records live (default: <app>/model)
  work_dir           uploads in flight, outgoing labelmaps and recent float maps (default: <model_dir>/.work)
  modality_check     refuse | flag | off: a DICOM whose modality/body part does not fit the model (default refuse)
  modalities_<model> comma-separated DICOM modalities a model takes ("any" disables its screen)
  body_parts_<model> comma-separated BodyPartExamined values a model takes
  dicomweb_modalities  modalities listed from a DICOMweb server (default CR,DX,MG,MR)
  dicomweb_convert_to_nifti  true: MONAI Label converts DICOMweb series to NIfTI (loses the modality; default false)
  results_keep, results_ttl_minutes   how many float-map results are kept, and how long (200, 60)
  max_upload_mb      largest accepted upload (default 512)
  train_epochs, train_minutes         defaults for a POST /train/<model> without settings
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random
from pydicom import Dataset

# The app folder is on sys.path when MONAI Label loads main.py; the package `lib` is ours.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib.activelearning import MostAnomalous, MostUncertain  # noqa: E402
from lib.configs import model_configs  # noqa: E402
from lib.infers import AnomalyInferTask  # noqa: E402
from lib.inputs import IMAGE_ID  # noqa: E402
from lib.results import ResultStore  # noqa: E402
from lib.scoring import AnomalyScoring  # noqa: E402
from lib.trainers import AnomalyTrainTask  # noqa: E402

logger = logging.getLogger(__name__)

FILE_EXTENSIONS = ["*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.dcm", "*.png", "*.jpg", "*.jpeg"]
DICOMWEB_MODALITIES = "CR,DX,MG,MR"


class AtomicLocalDatastore(LocalDatastore):
    """LocalDatastore whose index file is replaced atomically: a server killed while saving a label leaves the
    previous index or the new one, never half a file (which would lose every label's record)."""

    def _update_datastore_file(self, lock=True):
        from filelock import FileLock

        def write():
            self._ignore_event_config = True
            payload = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            folder = os.path.dirname(self._datastore_config_path)
            handle, tmp = tempfile.mkstemp(dir=folder, prefix=".datastore.", suffix=".tmp")
            try:
                with os.fdopen(handle, "w") as stream:
                    stream.write(payload)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(tmp, self._datastore_config_path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
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
        import time

        stamp, series = self._listed
        if time.monotonic() - stamp > 60:
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
            from monailabel.datastore.local import DataModel, ImageLabelModel

            try:
                info = self._dicom_info(image_id)
            except Exception:  # the listing already worked; the details are optional
                info = {"SeriesInstanceUID": image_id}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=""))
            self._update_datastore_file()
        return uri

    def get_label_uri(self, label_id, label_tag, image_id=""):
        """A label kept on this server (see save_label) is read from here, not fetched as a SEG from the PACS."""
        obj = self._datastore.objects.get(label_id)
        label = obj.labels.get(label_tag) if obj else None
        if label is not None and "dicom_seg" in (label.info or {}):
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        return super().get_label_uri(label_id, label_tag, image_id)

    def get_labeled_images(self, label_tag=None, labels=None):
        """Labelled in the PACS (a DICOM SEG) or on this server (a label the PACS could not take as a SEG)."""
        local = LocalDatastore.get_labeled_images(self, label_tag or "final", labels)
        return sorted(set(super().get_labeled_images(label_tag, labels)) | set(local))

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return sorted(set(self.list_images()) - set(self.get_labeled_images(label_tag, labels)))

    def save_label(self, image_id, label_filename, label_tag, label_info, label_id=""):
        """A final label goes back to the PACS as a DICOM SEG where dcmqi can make one. Films without patient
        position/orientation (most CR/DX) cannot be SEGs: the label is then kept on this server, and said so."""
        try:
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        except Exception as error:
            if label_tag != "final":
                raise
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            logger.warning(f"label of {image_id} kept on the server only: no DICOM SEG could be made ({reason})")
            info = {**(label_info or {}), "dicom_seg": f"not stored in the PACS: {reason}"}
            return LocalDatastore.save_label(self, image_id, label_filename, label_tag, info)


class MedAnomalyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = {key: str(value) for key, value in (conf or {}).items()}
        self.model_dir = Path(conf.get("model_dir") or os.path.join(app_dir, "model")).resolve()
        self.work_dir = Path(conf.get("work_dir") or self.model_dir / ".work").resolve()
        self.upload_dir = self.work_dir / "uploads"
        self.outgoing_dir = self.work_dir / "outgoing"
        self.max_upload_bytes = int(float(conf.get("max_upload_mb", 512)) * (1 << 20))
        self.modality_mode = conf.get("modality_check", "refuse").lower()
        if self.modality_mode not in ("refuse", "flag", "off"):
            raise ValueError(f"conf modality_check must be refuse, flag or off, not {self.modality_mode!r}")
        self.results = ResultStore(self.work_dir / "maps", keep=int(conf.get("results_keep", 200)),
                                   ttl_minutes=float(conf.get("results_ttl_minutes", 60)))
        self.model_configs = model_configs(self.model_dir, conf)
        self.train_defaults = {}
        if conf.get("train_epochs"):
            self.train_defaults["epochs"] = int(conf["train_epochs"])
        if conf.get("train_minutes"):
            self.train_defaults["minutes"] = float(conf["train_minutes"])
        # MONAI Label lists CT only from DICOMweb by default; these models read films and MR. (Conf options decide:
        # MONAI Label exports its defaults to the environment at start.)
        self.dicomweb_modalities = [m.strip().upper() for m in conf.get("dicomweb_modalities", DICOMWEB_MODALITIES)
                                    .split(",") if m.strip()]
        # Keep the DICOM files by default: their Modality and BodyPartExamined feed the modality screen.
        self.dicomweb_to_nifti = conf.get("dicomweb_convert_to_nifti", "false").lower() == "true"
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="MedAnomaly",
                         description="Anomaly maps of medical films and volumes", version="1",
                         labels={"anomaly": 1})
        self._auto_update_scoring = False  # scores are computed on demand (POST /scoring, active learning)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()  # -> _init_dicomweb_datastore below
        return AtomicLocalDatastore(self.studies, extensions=FILE_EXTENSIONS,
                                    auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                    read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def _init_dicomweb_datastore(self):
        from dicomweb_client.session_utils import create_session_from_user_pass
        from monailabel.datastore.dicom import DICOMwebClientX

        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                    settings.MONAI_LABEL_DICOMWEB_PASSWORD)
        client = DICOMwebClientX(url=self.studies, session=session,
                                 qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                 wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                 stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
        self._download_dcmqi_tools()  # finds itkimage2segimage on PATH (the dcmqi wheel): no download
        cache = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or str(self.work_dir / "dicomweb-cache")
        return ModalitiesDICOMWebDatastore(client, self.dicomweb_modalities, cache_path=cache,
                                           fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                                           convert_to_nifti=self.dicomweb_to_nifti)

    def init_infers(self):
        return {name: AnomalyInferTask(config, self.results, self.outgoing_dir, self.modality_mode)
                for name, config in self.model_configs.items()}

    def init_trainers(self):
        return {name: AnomalyTrainTask(config, self.train_defaults) for name, config in self.model_configs.items()}

    def init_strategies(self):
        return {"most_anomalous": MostAnomalous(self.model_configs), "most_uncertain": MostUncertain(self.model_configs),
                "random": Random()}

    def init_scoring_methods(self):
        return {"anomaly_score": AnomalyScoring(self.model_configs)}

    def info_strategies(self) -> list[str]:
        return sorted(self._strategies)

    def info_scoring(self) -> list[str]:
        return sorted(self._scoring_methods)

    def infer(self, request, datastore=None):
        """An existing path is taken as the image only when it is an upload of this server; anything else must be a
        datastore image id (MONAI Label would otherwise read any file the server can see)."""
        image = request.get("image")
        if isinstance(image, str) and os.path.exists(image):
            if Path(image).resolve().parent != self.upload_dir:
                if not IMAGE_ID.match(image) or image not in self.datastore().list_images():
                    from fastapi import HTTPException

                    raise HTTPException(status_code=400, detail="image must be a datastore id or an uploaded file")
        return super().infer(request, datastore)

    def on_init_complete(self):
        super().on_init_complete()
        if "monailabel.app" in sys.modules:  # the server process (not a training subprocess)
            from monailabel.app import app as fastapi_app

            from lib.routes import build_router, install_routes

            install_routes(fastapi_app, build_router(self))
            logger.info(f"MedAnomaly serving models {sorted(self.model_configs)} from {self.model_dir}")
