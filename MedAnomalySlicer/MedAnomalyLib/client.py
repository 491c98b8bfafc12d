"""A small MONAI Label REST client on `requests` (shipped with Slicer; Slicer's Python has no monailabel package).

Every HTTP failure becomes a `ServerError` carrying the server's own message (FastAPI's `{"detail": ...}`), and a
server that cannot be reached becomes `ServerUnreachable`, so the panel can show one readable sentence.
"""
from __future__ import annotations

import email.parser
import email.policy
import json
import re
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .errors import ServerError, ServerUnreachable


@dataclass
class ModelInfo:
    """One served model, as `/info/` describes it."""

    name: str
    description: str = ""
    kind: str = ""
    trained: bool = False
    dimension: int = 2
    labels: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # inference option -> default value
    inference_options: list = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    modalities: list = field(default_factory=list)
    body_parts: list = field(default_factory=list)
    model_version: str | None = None
    source: str | None = None  # "shipped" (the server's model zoo), "trained" (POST /train) or None
    card: dict = field(default_factory=dict)  # the shipped model's card: training data, figures, failure modes
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_info(cls, name: str, entry: dict) -> "ModelInfo":
        extra = entry.get("medanomaly") or {}
        config = dict(entry.get("config") or {})
        option_names = list(extra.get("inference_options") or [])
        return cls(
            name=name,
            description=str(entry.get("description") or ""),
            kind=str(extra.get("kind") or entry.get("type") or ""),
            trained=bool(extra.get("trained", True)),
            dimension=int(entry.get("dimension") or 2),
            labels=dict(entry.get("labels") or {}),
            options={key: config.get(key) for key in option_names} if option_names else config,
            inference_options=option_names,
            thresholds=dict(extra.get("thresholds") or {}),
            modalities=list(extra.get("modalities") or entry.get("modalities") or []),
            body_parts=list(extra.get("body_parts") or entry.get("body_parts") or []),
            model_version=extra.get("model_version"),
            source=extra.get("source"),
            card=dict(extra.get("card") or {}),
            raw=entry,
        )

    def summary(self) -> str:
        """One line for the panel: what it is, whether it can be used yet."""
        state = "trained" if self.trained else "not trained yet"
        kind = f" ({self.kind})" if self.kind else ""
        text = f"{self.name}{kind}, {state}: {self.description}".strip().rstrip(":")
        for title, values in (("modalities", self.modalities), ("body parts", self.body_parts)):
            if values:
                text += f"; {title}: {', '.join(str(v) for v in values)}"
        return text


_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def make_image_id(name: str) -> str:
    """A datastore id from a node name: only letters, digits and `._-` (the server refuses others), made unique."""
    stem = _SAFE_ID.sub("_", name or "image").strip("._-")[:40] or "image"
    return f"{stem}-{uuid.uuid4().hex[:8]}"


class MonaiLabelClient:
    """MONAI Label's standard REST API plus MedAnomaly's `/medanomaly/maps/` route."""

    def __init__(self, server_url: str, timeout: float = 600.0):
        url = (server_url or "").strip()
        if not url:
            raise ServerUnreachable("no server URL given", url)
        if "://" not in url:
            url = "http://" + url
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ServerUnreachable("the URL must look like http://host:port", url)
        self.server_url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    # --- standard MONAI Label endpoints -------------------------------------------------------------------------
    def info(self) -> dict:
        return self._json("GET", "/info/")

    def models(self) -> list[ModelInfo]:
        info = self.info()
        return [ModelInfo.from_info(name, entry or {}) for name, entry in (info.get("models") or {}).items()]

    def strategies(self) -> list[str]:
        return list((self.info().get("strategies") or {}).keys())

    def datastore(self, output: str = "stats") -> dict:
        return self._json("GET", "/datastore/", query={"output": output})

    def upload_image(self, path, image_id: str, params: dict | None = None) -> str:
        path = Path(path)
        answer = self._json("PUT", "/datastore/image", query={"image": image_id},
                            data={"params": json.dumps(params or {})}, files={"file": (path.name, path.read_bytes())})
        return str(answer.get("image", image_id))

    def download_image(self, image_id: str, folder) -> Path:
        return self._download("/datastore/image", {"image": image_id}, folder, fallback_name=f"{image_id}.nii.gz")

    def save_label(self, image_id: str, path, tag: str = "final", params: dict | None = None) -> dict:
        path = Path(path)
        return self._json("PUT", "/datastore/label", query={"image": image_id, "tag": tag},
                          data={"params": json.dumps(params or {})}, files={"label": (path.name, path.read_bytes())})

    def download_label(self, image_id: str, folder, tag: str = "final") -> Path:
        return self._download("/datastore/label", {"label": image_id, "tag": tag}, folder,
                              fallback_name=f"{image_id}-{tag}.nii.gz")

    def infer(self, model: str, image_id: str, params: dict | None = None) -> tuple[dict, bytes | None, str]:
        """(result JSON, labelmap file bytes or None, labelmap file name) for an image already in the datastore."""
        _, headers, payload = self._request("POST", f"/infer/{_quote(model)}", query={"image": image_id},
                                            data={"params": json.dumps(params or {})})
        kind = headers.get("Content-Type", "")
        if kind.startswith("multipart/"):
            parts = parse_multipart(payload, kind)
            result = json.loads(parts["params"][1].decode() or "{}") if "params" in parts else {}
            name, label = parts.get("image", (None, None))
            return result, label, name or "label.nii.gz"
        return _decode_json(payload, self.server_url), None, ""

    def train_start(self, model: str, params: dict | None = None) -> dict:
        return self._json("POST", f"/train/{_quote(model)}", json=params or {})

    def train_status(self, check_if_running: bool = False):
        """The current/last training task; None when the server never trained since it started."""
        try:
            return self._json("GET", "/train/", query={"check_if_running": str(check_if_running).lower()})
        except ServerError as error:
            if error.status == 404:
                return None
            raise

    def train_stop(self) -> dict:
        return self._json("DELETE", "/train/")

    def next_sample(self, strategy: str, params: dict | None = None) -> dict:
        return self._json("POST", f"/activelearning/{_quote(strategy)}", json=params or {})

    # --- MedAnomaly maps ----------------------------------------------------------------------------------------
    def download_map(self, relative_url: str, destination) -> Path:
        """Fetch a float map (`/medanomaly/maps/<result>/<name>.nrrd`) given in the inference result."""
        parsed = urllib.parse.urlparse(relative_url)
        if parsed.scheme or parsed.netloc:  # only paths on our own server: never follow a URL elsewhere
            if f"{parsed.scheme}://{parsed.netloc}" != self.server_url:
                raise ServerError(f"refusing a map URL on another host: {relative_url}")
        _, _, payload = self._request("GET", parsed.path)
        destination = Path(destination)
        destination.write_bytes(payload)
        return destination

    # --- plumbing -----------------------------------------------------------------------------------------------
    def _download(self, route: str, query: dict, folder, fallback_name: str) -> Path:
        _, headers, payload = self._request("GET", route, query=query)
        name = _filename(headers.get("Content-Disposition", "")) or fallback_name
        path = Path(folder) / Path(name).name
        path.write_bytes(payload)
        return path

    def _json(self, method: str, route: str, query: dict | None = None, **body):
        _, _, payload = self._request(method, route, query, **body)
        return _decode_json(payload, self.server_url)

    def _request(self, method, route, query=None, **body):
        """(status, headers, body bytes); `body` is passed to requests (data=, files=, json=)."""
        url = self.server_url + route
        try:
            response = self.session.request(method, url, params=query, timeout=self.timeout, **body)
        except requests.RequestException as error:
            raise ServerUnreachable(_reason(error), self.server_url) from None
        if response.status_code >= 400:
            raise ServerError(_error_message(response), response.status_code, response.url)
        return response.status_code, response.headers, response.content


def _quote(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _decode_json(payload: bytes, url: str):
    try:
        return json.loads(payload.decode() or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ServerError(f"the server at {url} did not answer JSON (is this a MONAI Label server?)") from None


def _error_message(response: requests.Response) -> str:
    """The server's own explanation: FastAPI `detail` (a string, or a list of validation errors)."""
    body = response.text
    try:
        detail = json.loads(body).get("detail", body)
    except (json.JSONDecodeError, AttributeError):
        detail = body.strip()
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', item)}" if isinstance(item, dict)
            else str(item) for item in detail)
    return str(detail or response.reason or f"HTTP {response.status_code}")


def _reason(error: requests.RequestException) -> str:
    """The innermost cause ("Connection refused", "timed out"), not the whole urllib3 retry story."""
    if isinstance(error, requests.Timeout):
        return "no answer in time (timed out)"
    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    return match.group(1) if match else text


def _filename(disposition: str) -> str | None:
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", disposition or "")
    return urllib.parse.unquote(match.group(1)) if match else None


def parse_multipart(payload: bytes, content_type: str) -> dict:
    """name -> (file name or None, bytes) for each part of a multipart answer."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + payload)
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = (part.get_filename(), part.get_payload(decode=True))
    return parts
