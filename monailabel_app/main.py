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
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

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
        if studies.startswith(("http://", "https://")) and "MONAI_LABEL_DICOMWEB_SEARCH_FILTER" not in os.environ:
            # MONAI Label lists CT only by default; these models read films and MR.
            modalities = conf.get("dicomweb_modalities", DICOMWEB_MODALITIES)
            settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER = {"Modality": modalities.replace(",", "\\")}
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="MedAnomaly",
                         description="Anomaly maps of medical films and volumes", version="1",
                         labels={"anomaly": 1})
        self._auto_update_scoring = False  # scores are computed on demand (POST /scoring, active learning)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return AtomicLocalDatastore(self.studies, extensions=FILE_EXTENSIONS,
                                    auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                    read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

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
