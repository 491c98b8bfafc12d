"""The server's own front door for the requests that need checking before MONAI Label's handlers see them.

MONAI Label's endpoints trust their input: an unknown model or a bad `params` JSON ends in a 500, an image id
such as `../../etc/passwd` reaches the file system, and any readable path on the server is taken as an image.
These routes are placed ahead of MONAI Label's at start (same paths, same request and response formats, so
MONAILabelClient works unchanged); they validate, answer refusals with a 4xx and a clear message, then hand over
to MONAI Label's own functions. They also add the float-map route /medanomaly/maps/.

Ids are checked in one place for every route, MONAI Label's included: `IdCheck` refuses a query parameter
`image`, `id` or `label` that is not a plain name, and a `tag` that is not a plain tag, before any route runs."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl

from fastapi import APIRouter, BackgroundTasks, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.interfaces.utils.app import app_instance

from medanomaly.config_validation import ConfigError, validate_training_settings
from medanomaly.errors import MedAnomalyError, UnsupportedImageError
from .inputs import bad_request, check_image_id, check_image_size, check_label_tag, load_image, parse_params_json
from .trainers.multi_gpu import GPU_REQUEST_KEYS, check_gpu_request

logger = logging.getLogger(__name__)
KNOWN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm", ".png", ".jpg", ".jpeg")
TRAIN_REQUEST_KEYS = {"client_id"}  # MONAI Label clients send it; not a training setting
ID_PARAMETERS = {"image": check_image_id, "id": check_image_id, "label": check_image_id, "tag": check_label_tag}


class IdCheck:
    """ASGI wrapper around the whole app: every route that takes an image or label id (or a label tag) as a query
    parameter gets it checked here, once, before the route runs."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("query_string"):
            query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            for key, value in query:
                check = ID_PARAMETERS.get(key)
                if check is None or (key == "image" and value == "") or (key == "tag" and value == ""):
                    continue
                try:
                    check(value)
                except HTTPException as error:
                    await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def upload_suffix(filename: str | None) -> str:
    """A known image suffix from the client's file name, else none (the reader then goes by content)."""
    name = (filename or "").lower()
    return next((suffix for suffix in KNOWN_SUFFIXES if name.endswith(suffix)), "")


def save_upload(upload: UploadFile, folder: Path, max_bytes: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(dir=folder, prefix="upload-", suffix=upload_suffix(upload.filename))
    size = 0
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise HTTPException(status_code=413, detail=f"upload larger than {max_bytes >> 20} MiB")
                out.write(chunk)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return Path(path)


def as_http_error(error: Exception) -> HTTPException:
    if isinstance(error, HTTPException):
        return error
    if isinstance(error, MONAILabelException):
        return HTTPException(status_code=404 if "not found" in error.msg.lower() else 400, detail=error.msg)
    if isinstance(error, UnsupportedImageError):
        return HTTPException(status_code=422, detail=f"cannot use this image: {error}")
    if isinstance(error, MedAnomalyError):
        return HTTPException(status_code=400, detail=str(error))
    logger.exception("request failed")
    return HTTPException(status_code=500, detail=f"server error: {type(error).__name__}: {error}")


def build_router(app) -> APIRouter:
    """`app` is the MedAnomaly MONAILabelApp (its model configs, result store, folders and limits)."""
    router = APIRouter()
    # the smallest side any served model accepts: an upload under it can be scored by none of them
    smallest_side = min(config.metadata.min_image_size for config in app.models.values())

    def datastore():
        return app_instance().datastore()

    def require_model(model: str):
        if model not in app.models:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; models: {sorted(app.models)}")
        return app.models[model]

    def require_image(image_id: str) -> None:
        """The id's form was checked by IdCheck; here: is it in the datastore."""
        store = datastore()
        if isinstance(store, LocalDatastore) and not store.get_image_uri(image_id):  # one lookup, not a listing
            raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")

    @router.post("/infer/{model}", summary="Run an anomaly model on a datastore image or an uploaded file")
    def infer(background_tasks: BackgroundTasks, model: str, image: str = "", session_id: str = "",
              params: str = Form("{}"), file: UploadFile = File(None), label: UploadFile = File(None),
              output: Optional[ResultType] = None):
        require_model(model)
        request_params = parse_params_json(params)
        if session_id:
            raise bad_request("sessions are not supported by this server: send image=<id> or a file")
        if output == ResultType.dicom_seg:
            raise bad_request("output=dicom_seg is not supported: use all, json or image")
        uploaded = None
        try:
            if file is not None:
                uploaded = save_upload(file, app.upload_dir, app.max_upload_bytes)
                source = str(uploaded)
            elif image:
                require_image(image)
                source = image
            else:
                raise bad_request("send image=<datastore id> or a file to score")
            # straight to the model's task (MONAI Label's app.infer would take any existing path as the image):
            # the id was checked and the upload is ours
            request = {**request_params, "model": model,
                       "image": source if uploaded else datastore().get_image_uri(image)}
            label_file, body = app._infers[model](request)
            if request_params.get("save_label") is True and not uploaded:  # kept as a datastore label, as MONAI Label does
                datastore().save_label(image, label_file, str(request_params.get("label_tag") or "original"),
                                       {"model": model, "params": body})
            result = {"label": label_file, "tag": "original", "file": label_file, "params": body}
            return send_response(datastore(), result, output, background_tasks)
        except Exception as error:
            raise as_http_error(error) from None
        finally:
            if uploaded is not None:
                uploaded.unlink(missing_ok=True)

    def add_image(image: Optional[str], params: str, file: UploadFile):
        save_params = parse_params_json(params)
        image_id = image or Path(file.filename or "").name
        if not image:
            suffix = upload_suffix(image_id)
            image_id = image_id[: -len(suffix)] if suffix else image_id
        check_image_id(image_id)
        uploaded = save_upload(file, app.upload_dir, app.max_upload_bytes)
        try:
            check_image_size(load_image(uploaded), smallest_side, "any served")
            return {"image": datastore().add_image(image_id, str(uploaded), save_params)}
        except Exception as error:
            raise as_http_error(error) from None
        finally:
            uploaded.unlink(missing_ok=True)

    @router.put("/datastore/image", summary="Upload an image (checked before it enters the datastore)")
    def put_image(image: Optional[str] = None, params: str = Form("{}"), file: UploadFile = File(...)):
        return add_image(image, params, file)

    @router.put("/datastore/", include_in_schema=False)
    def put_image_legacy(image: Optional[str] = None, params: str = Form("{}"), file: UploadFile = File(...)):
        return add_image(image, params, file)

    @router.put("/datastore/image/info", summary="Update an image's info (e.g. {\"abnormal\": true, \"class\": ...})")
    def put_image_info(image: str, info: str = Form("{}")):
        require_image(image)
        values = parse_params_json(info)
        if "abnormal" in values and not isinstance(values["abnormal"], bool):
            raise bad_request(f"abnormal must be true or false, got {values['abnormal']!r}")
        try:
            datastore().update_image_info(image, values)
            return datastore().get_image_info(image)
        except Exception as error:
            raise as_http_error(error) from None

    @router.delete("/datastore/image", summary="Remove an image and its labels")
    @router.delete("/datastore/", include_in_schema=False)
    def delete_image(id: str):
        require_image(id)
        try:
            datastore().remove_image(id)
            return {}
        except Exception as error:
            raise as_http_error(error) from None

    @router.delete("/datastore/label", summary="Remove a label")
    def delete_label(id: str, tag: str):
        require_image(id)
        if tag not in (datastore().get_labels_by_image_id(id) or {}):
            raise HTTPException(status_code=404, detail=f"image {id!r} has no {tag!r} label")
        try:
            datastore().remove_label(id, tag)
            return {}
        except Exception as error:
            raise as_http_error(error) from None

    @router.put("/datastore/label", summary="Save a label (checked against its image's grid)")
    def put_label(image: str, params: str = Form("{}"), tag: str = "final", label: UploadFile = File(...)):
        require_image(image)
        save_params = parse_params_json(params)
        uploaded = save_upload(label, app.upload_dir, app.max_upload_bytes)
        try:
            mask = load_image(uploaded)
            uri = datastore().get_image_uri(image)
            if uri and Path(uri).is_file():
                target = load_image(uri)
                if mask.array.size != target.array.size or mask.array.squeeze().shape != target.array.squeeze().shape:
                    raise HTTPException(status_code=422, detail=f"label shape {list(mask.shape)} does not match image "
                                                                f"{image!r} of shape {list(target.shape)}")
            label_id = datastore().save_label(image, str(uploaded), tag or "final", save_params)
            result = app.on_save_label(image, label_id) or {}
            return {**result, "image": image, "label": label_id}
        except Exception as error:
            raise as_http_error(error) from None
        finally:
            uploaded.unlink(missing_ok=True)

    def checked_settings(config, params) -> dict:
        """The training settings, validated against the model's config types and ranges (400 naming the key)."""
        settings = {key: value for key, value in (params or {}).items()
                    if key not in TRAIN_REQUEST_KEYS | GPU_REQUEST_KEYS}
        try:
            gpus = check_gpu_request(params or {})  # MONAI Label's multi_gpu / gpus, against this machine's GPUs
        except ValueError as error:
            raise bad_request(str(error)) from None
        try:
            return {**(params or {}), **gpus, **validate_training_settings(config.cls, settings)}
        except ConfigError as error:
            raise bad_request(str(error)) from None

    @router.post("/train/{model}", summary="Train one model on the datastore (settings checked before submission)")
    def train(model: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
              enqueue: Optional[bool] = False):
        from monailabel.endpoints.train import run_model

        params = checked_settings(require_model(model), params)
        return run_model(model, params, run_sync, enqueue)

    @router.post("/train/", include_in_schema=False)
    def train_all(params: Optional[dict] = None, run_sync: Optional[bool] = False, enqueue: Optional[bool] = False):
        """MONAI Label's legacy "train every model": the settings must suit each served model."""
        from monailabel.endpoints.train import run_model

        for config in app.models.values():
            checked_settings(config, params)
        return run_model(None, params or {}, run_sync, enqueue)

    @router.post("/activelearning/{strategy}", summary="Next image to label")
    def next_sample(strategy: str, params: Optional[dict] = None):
        from monailabel.endpoints.activelearning import sample

        if strategy not in app.info_strategies():
            raise HTTPException(status_code=404, detail=f"unknown strategy {strategy!r}; "
                                                        f"strategies: {app.info_strategies()}")
        if params and params.get("model"):
            require_model(params["model"])
        try:
            return sample(strategy, params or {}, None)
        except Exception as error:
            raise as_http_error(error) from None

    @router.post("/scoring/{method}", summary="Score every datastore image (runs now, in the server)")
    def scoring(method: str, params: Optional[dict] = None):
        if method not in app.info_scoring():
            raise HTTPException(status_code=404, detail=f"unknown scoring method {method!r}; "
                                                        f"methods: {app.info_scoring()}")
        params = params or {}
        if params.get("model"):
            require_model(params["model"])
        try:
            return app.scoring({**params, "method": method})
        except Exception as error:
            raise as_http_error(error) from None

    # ----- MONAI Label routes whose own handlers answer 500 to ordinary requests -----
    @router.post("/infer/wsi/{model}", include_in_schema=False)
    @router.post("/infer/wsi_v2/{model}", summary="Whole-slide inference: not served (films and volumes only)")
    def wsi_infer(model: str):
        raise HTTPException(status_code=404, detail="whole-slide (WSI) inference is not served by MedAnomaly: "
                                                    f"POST /infer/{model} scores films and volumes")

    @router.post("/batch/infer/{model}", summary="Score every datastore image with one model (labels kept as 'original')")
    def batch_infer(model: str, images: Optional[BatchInferImageType] = BatchInferImageType.IMAGES_ALL,
                    params: Optional[dict] = None, run_sync: Optional[bool] = False):
        from monailabel.endpoints.batch_infer import run as monai_label_batch_infer

        require_model(model)
        # MONAI Label's defaults ask for CUDA and several GPUs; this server runs wherever it is started
        params = {"save_label": True, "label_tag": "original", "max_workers": 1, "max_batch_size": 0,
                  **(params or {}), "multi_gpu": False}
        try:
            return monai_label_batch_infer(model, images, params, run_sync)
        except Exception as error:
            raise as_http_error(error) from None

    @router.put("/model/{model}", summary="Upload a checkpoint: not accepted (checkpoints are published by training)")
    def put_model(model: str):
        require_model(model)
        raise HTTPException(status_code=405, detail=f"checkpoints are published by training only: POST /train/{model}")

    @router.delete("/model/{model}", summary="Set aside the checkpoint trained here (a shipped one is never removed)")
    def delete_model(model: str):
        from monailabel.endpoints.model import delete_model as monai_label_delete

        if require_model(model).source() == "shipped":
            raise HTTPException(status_code=409, detail=f"model {model} serves its shipped checkpoint, which is part "
                                                        f"of the release and is not deleted")
        return monai_label_delete(model)

    @router.get("/datastore/dataset", summary="Download the labelled dataset as a ZIP archive")
    def download_dataset(limit_cases: Optional[int] = None):
        from monailabel.endpoints.datastore import download_dataset as monai_label_download

        if limit_cases is not None and limit_cases < 1:
            raise bad_request(f"limit_cases must be at least 1, got {limit_cases}")
        try:
            return monai_label_download(limit_cases)
        except AssertionError as error:  # MONAI Label's way of saying "nothing to archive"
            raise HTTPException(status_code=404, detail=f"no dataset archive: {error}") from None

    @router.put("/datastore/label/info", summary="Update a label's info")
    @router.put("/datastore/updatelabelinfo", include_in_schema=False)
    def put_label_info(label: str, tag: str, info: str = Form(None), params: str = Form(None)):
        require_image(label)
        if tag not in (datastore().get_labels_by_image_id(label) or {}):
            raise HTTPException(status_code=404, detail=f"image {label!r} has no {tag!r} label")
        values = parse_params_json(info if info is not None else params)
        try:
            return datastore().update_label_info(label, tag, values)
        except Exception as error:
            raise as_http_error(error) from None

    @router.get("/proxy/dicom/{path:path}", include_in_schema=False)
    @router.post("/proxy/dicom/{path:path}", include_in_schema=False)
    async def proxy_dicom(request: Request, path: str):
        """MONAI Label's DICOMweb proxy (for OHIF), only where the datastore is a DICOMweb server."""
        from monailabel.endpoints.proxy import proxy_dicom as monai_label_proxy

        if not isinstance(datastore(), DICOMWebDatastore):
            raise HTTPException(status_code=404, detail="no DICOMweb server behind this MedAnomaly server: the "
                                                        "datastore is a local folder")
        op, _, rest = path.partition("/")
        if op not in ("wado", "qido", "stow"):
            op, rest = "", path
        return await monai_label_proxy(request, op, rest)

    @router.get("/logs/", summary="The server log: its last lines as text, or a page that follows it")
    def server_log(lines: Optional[int] = 300, html: Optional[bool] = True, text: Optional[bool] = False,
                   refresh: Optional[int] = 0):
        """MONAI Label's handler reads the log in the locale's encoding and answers 500 under an ASCII locale
        once the log holds a non-ASCII character; the log is UTF-8 text, whatever the locale."""
        from collections import deque

        from fastapi.responses import HTMLResponse, PlainTextResponse
        from monailabel.config import settings
        from monailabel.endpoints.logs import HTML_TEMPLATE

        log = Path(settings.MONAI_LABEL_APP_DIR) / "logs" / "app.log"
        if not log.is_file():
            raise HTTPException(status_code=404, detail=f"no server log yet at {log}")
        with open(log, encoding="utf-8", errors="replace") as handle:
            last = "".join(deque(handle, lines) if lines and lines > 0 else handle)
        if html and not text:
            every = max(refresh, 3) if refresh else 0
            return HTMLResponse(HTML_TEMPLATE.replace("LINES_T", str(lines)).replace(
                "REFRESH_T", f"setInterval(fetch, 1000*{every});" if every else ""))
        return PlainTextResponse(last)

    @router.get("/logs/gpu", summary="GPU information (nvidia-smi)")
    def gpu_info():
        import shutil
        import subprocess

        from fastapi.responses import PlainTextResponse

        if shutil.which("nvidia-smi") is None:
            raise HTTPException(status_code=404, detail="no NVIDIA GPU information on this server: nvidia-smi is "
                                                        "not installed")
        completed = subprocess.run(["nvidia-smi"], capture_output=True, timeout=30)
        return PlainTextResponse(completed.stdout.decode("utf-8", errors="replace"))

    @router.get("/medanomaly/maps/{result_id}", summary="Names of the float maps of an infer result")
    def map_names(result_id: str):
        names = app.results.names(result_id)
        if names is None:
            raise HTTPException(status_code=404, detail=f"no result {result_id!r} (results are kept for a while only)")
        return {"result_id": result_id, "maps": {name: f"/medanomaly/maps/{result_id}/{name}.nrrd" for name in names}}

    @router.get("/medanomaly/maps/{result_id}/{filename}", summary="A float map (NRRD) of an infer result")
    def map_file(result_id: str, filename: str):
        name = filename[: -len(".nrrd")] if filename.endswith(".nrrd") else filename
        path = app.results.path(result_id, name)
        if path is None:
            raise HTTPException(status_code=404, detail=f"no map {filename!r} for result {result_id!r} "
                                                        "(results are kept for a while only)")
        return FileResponse(path, media_type="application/octet-stream", filename=f"{name}.nrrd")

    @router.get("/medanomaly/images", summary="Image ids of the datastore (local folder or DICOMweb) and the labelled ones")
    def images():
        try:
            store = datastore()
            return {"images": sorted(store.list_images()), "labelled": sorted(store.get_labeled_images())}
        except Exception as error:
            raise as_http_error(error) from None

    @router.get("/medanomaly/models", summary="Every served model with its state")
    def models():
        return {name: config.describe() for name, config in app.models.items()}

    return router


def install_routes(fastapi_app, router: APIRouter) -> None:
    """Put the router's routes ahead of MONAI Label's (the first matching route answers), and IdCheck in front of
    every route. (The app has started: its middleware stack is built, so IdCheck wraps it.)"""
    before = len(fastapi_app.router.routes)
    fastapi_app.include_router(router)
    added = fastapi_app.router.routes[before:]
    del fastapi_app.router.routes[before:]
    fastapi_app.router.routes[0:0] = added
    fastapi_app.openapi_schema = None
    if not isinstance(fastapi_app.middleware_stack, IdCheck):
        fastapi_app.middleware_stack = IdCheck(fastapi_app.middleware_stack or fastapi_app.build_middleware_stack())
