"""The server's own front door for the requests that need checking before MONAI Label's handlers see them.

MONAI Label's endpoints trust their input: an unknown model or a bad `params` JSON ends in a 500, an image id
such as `../../etc/passwd` reaches the file system, and any readable path on the server is taken as an image.
These routes are placed ahead of MONAI Label's at start (same paths, same request and response formats, so
MONAILabelClient works unchanged); they validate, answer refusals with a 4xx and a clear message, then hand over
to MONAI Label's own functions. They also add the float-map route /medanomaly/maps/."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, BackgroundTasks, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse
from monailabel.datastore.local import LocalDatastore
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.utils.app import app_instance

from medanomaly.errors import MedAnomalyError, UnsupportedImageError
from .inputs import bad_request, check_image_id, check_label_tag, load_image, parse_params_json
from .trainers.multi_gpu import GPU_REQUEST_KEYS, check_gpu_request

logger = logging.getLogger(__name__)
KNOWN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm", ".png", ".jpg", ".jpeg")
TRAIN_REQUEST_KEYS = {"minutes", "client_id"} | GPU_REQUEST_KEYS


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


def checked_image(path: Path):
    """The image an upload holds, or a 422 saying why it cannot be used."""
    return load_image(path)


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

    def datastore():
        return app_instance().datastore()

    def require_model(model: str):
        if model not in app.model_configs:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; models: {sorted(app.model_configs)}")
        return app.model_configs[model]

    def require_image(image_id: str) -> None:
        check_image_id(image_id)
        store = datastore()
        if isinstance(store, LocalDatastore) and image_id not in store.list_images():
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
            request = {**request_params, "model": model, "image": source}
            result = app.infer(request)
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
            checked_image(uploaded)
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
        check_label_tag(tag)
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
        check_label_tag(tag or "final")
        save_params = parse_params_json(params)
        uploaded = save_upload(label, app.upload_dir, app.max_upload_bytes)
        try:
            mask = checked_image(uploaded)
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

    @router.post("/train/{model}", summary="Train one model on the datastore")
    def train(model: str, params: Optional[dict] = None, run_sync: Optional[bool] = False,
              enqueue: Optional[bool] = False):
        from monailabel.endpoints.train import run_model

        config = require_model(model)
        params = params or {}
        known = set(config.cls.describe()["default_config"]) | TRAIN_REQUEST_KEYS
        unknown = sorted(set(params) - known)
        if unknown:
            raise bad_request(f"unknown training settings {unknown} for {model}; known: {sorted(known)}")
        try:
            params = {**params, **check_gpu_request(params)}  # MONAI Label's multi_gpu and gpus vs the GPUs here
        except ValueError as error:
            raise bad_request(str(error)) from None
        return run_model(model, params, run_sync, enqueue)

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
        return {name: config.describe() for name, config in app.model_configs.items()}

    return router


def install_routes(fastapi_app, router: APIRouter) -> None:
    """Put the router's routes ahead of MONAI Label's (the first matching route answers)."""
    before = len(fastapi_app.router.routes)
    fastapi_app.include_router(router)
    added = fastapi_app.router.routes[before:]
    del fastapi_app.router.routes[before:]
    fastapi_app.router.routes[0:0] = added
    fastapi_app.openapi_schema = None
