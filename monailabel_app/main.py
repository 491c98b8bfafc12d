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

import logging
import os
import sys
from pathlib import Path

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

# The app folder is on sys.path when MONAI Label loads main.py; the package `lib` is ours.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib.activelearning import MostAnomalous, MostUncertain  # noqa: E402
from lib.configs import model_configs  # noqa: E402
from lib.datastores import AtomicLocalDatastore, ModalitiesDICOMWebDatastore  # noqa: E402
from lib.inputs import IMAGE_ID  # noqa: E402
from lib.results import ResultStore  # noqa: E402
from lib.scoring import AnomalyScoring  # noqa: E402

logger = logging.getLogger(__name__)

FILE_EXTENSIONS = ["*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.dcm", "*.png", "*.jpg", "*.jpeg"]
DICOMWEB_MODALITIES = "CR,DX,MG,MR"


class MedAnomalyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = {key: str(value) for key, value in (conf or {}).items()}
        self.model_dir = Path(conf.get("model_dir") or os.path.join(app_dir, "model")).resolve()
        self.work_dir = Path(conf.get("work_dir") or self.model_dir / ".work").resolve()
        self.upload_dir = self.work_dir / "uploads"
        self.max_upload_bytes = int(float(conf.get("max_upload_mb", 512)) * (1 << 20))
        self.modality_mode = conf.get("modality_check", "refuse").lower()
        if self.modality_mode not in ("refuse", "flag", "off"):
            raise ValueError(f"conf modality_check must be refuse, flag or off, not {self.modality_mode!r}")
        self.results = ResultStore(self.work_dir / "maps", keep=int(conf.get("results_keep", 200)),
                                   ttl_minutes=float(conf.get("results_ttl_minutes", 60)))
        train_defaults = {}
        if conf.get("train_epochs"):
            train_defaults["epochs"] = int(conf["train_epochs"])
        if conf.get("train_minutes"):
            train_defaults["minutes"] = float(conf["train_minutes"])
        # one MONAI Label TaskConfig per registered model, as the radiology sample app keeps them
        self.models = model_configs(self.model_dir, conf, results=self.results, label_dir=self.work_dir / "outgoing",
                                    modality_mode=self.modality_mode, train_defaults=train_defaults)
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
        infers = {}
        for name, task_config in self.models.items():
            task = task_config.infer()
            infers.update(task if isinstance(task, dict) else {name: task})
        return infers

    def init_trainers(self):
        trainers = {}
        for name, task_config in self.models.items():
            task = task_config.trainer()
            if task is not None:
                trainers[name] = task
        return trainers

    def init_strategies(self):
        return {"most_anomalous": MostAnomalous(self.models), "most_uncertain": MostUncertain(self.models),
                "random": Random()}

    def init_scoring_methods(self):
        return {"anomaly_score": AnomalyScoring(self.models)}

    def info_strategies(self) -> list[str]:
        return sorted(self._strategies)

    def info_scoring(self) -> list[str]:
        return sorted(self._scoring_methods)

    def infer(self, request, datastore=None):
        """MONAI Label's own callers (batch inference): an existing path is taken as the image only when it is an
        upload of this server; anything else must be a datastore image id (MONAI Label would otherwise read any
        file the server can see)."""
        image = request.get("image")
        if isinstance(image, str) and os.path.exists(image) and Path(image).resolve().parent != self.upload_dir:
            if not IMAGE_ID.match(image) or image not in (datastore or self.datastore()).list_images():
                from fastapi import HTTPException

                raise HTTPException(status_code=400, detail="image must be a datastore id or an uploaded file")
        return super().infer(request, datastore)

    def on_init_complete(self):
        super().on_init_complete()
        if "monailabel.app" in sys.modules:  # the server process (not a training subprocess)
            from monailabel.app import app as fastapi_app

            from lib.routes import build_router, install_routes

            install_routes(fastapi_app, build_router(self))
            logger.info(f"MedAnomaly serving models {sorted(self.models)} from {self.model_dir}")
