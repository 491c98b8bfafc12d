"""A small MONAI Label REST client on the standard library (Slicer's Python has no monailabel package).

Every HTTP failure becomes a `ServerError` carrying the server's own message (FastAPI's `{"detail": ...}`), and a
server that cannot be reached becomes `ServerUnreachable`, so the panel can show one readable sentence.
"""
from __future__ import annotations

import email.parser
import email.policy
import json
import mimetypes
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

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
    model_version: str | None = None
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
            modalities=list(extra.get("modalities") or []),
            model_version=extra.get("model_version"),
            raw=entry,
        )

    def summary(self) -> str:
        """One line for the panel: what it is, whether it can be used yet."""
        state = "trained" if self.trained else "not trained yet"
        kind = f" ({self.kind})" if self.kind else ""
        return f"{self.name}{kind}, {state}: {self.description}".strip().rstrip(":")


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
        body, content_type = encode_multipart({"params": json.dumps(params or {})},
                                              {"file": (path.name, path.read_bytes())})
        answer = self._json("PUT", "/datastore/image", query={"image": image_id}, body=body, content_type=content_type)
        return str(answer.get("image", image_id))

    def download_image(self, image_id: str, folder) -> Path:
        return self._download("/datastore/image", {"image": image_id}, folder, fallback_name=f"{image_id}.nii.gz")

    def save_label(self, image_id: str, path, tag: str = "final", params: dict | None = None) -> dict:
        path = Path(path)
        body, content_type = encode_multipart({"params": json.dumps(params or {})},
                                              {"label": (path.name, path.read_bytes())})
        return self._json("PUT", "/datastore/label", query={"image": image_id, "tag": tag}, body=body,
                          content_type=content_type)

    def download_label(self, image_id: str, folder, tag: str = "final") -> Path:
        return self._download("/datastore/label", {"label": image_id, "tag": tag}, folder,
                              fallback_name=f"{image_id}-{tag}.nii.gz")

    def infer(self, model: str, image_id: str, params: dict | None = None) -> tuple[dict, bytes | None, str]:
        """(result JSON, labelmap file bytes or None, labelmap file name) for an image already in the datastore."""
        body, content_type = encode_multipart({"params": json.dumps(params or {})}, {})
        status, headers, payload = self._request("POST", f"/infer/{_quote(model)}", query={"image": image_id},
                                                 body=body, content_type=content_type)
        kind = headers.get("Content-Type", "")
        if kind.startswith("multipart/"):
            parts = parse_multipart(payload, kind)
            result = json.loads(parts["params"][1].decode() or "{}") if "params" in parts else {}
            name, label = parts.get("image", (None, None))
            return result, label, name or "label.nii.gz"
        return _decode_json(payload, self.server_url), None, ""

    def train_start(self, model: str, params: dict | None = None) -> dict:
        return self._json("POST", f"/train/{_quote(model)}", body=json.dumps(params or {}).encode(),
                          content_type="application/json")

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
        return self._json("POST", f"/activelearning/{_quote(strategy)}", body=json.dumps(params or {}).encode(),
                          content_type="application/json")

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

    def _json(self, method: str, route: str, query: dict | None = None, body: bytes | None = None,
              content_type: str | None = None):
        _, _, payload = self._request(method, route, query, body, content_type)
        return _decode_json(payload, self.server_url)

    def _request(self, method, route, query=None, body=None, content_type=None):
        url = self.server_url + route
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            raise ServerError(_error_message(error), error.code, url) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerUnreachable(str(reason), self.server_url) from None


def _quote(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _decode_json(payload: bytes, url: str):
    try:
        return json.loads(payload.decode() or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ServerError(f"the server at {url} did not answer JSON (is this a MONAI Label server?)") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's own explanation: FastAPI `detail` (a string, or a list of validation errors)."""
    try:
        body = error.read().decode(errors="replace")
    except OSError:
        body = ""
    try:
        detail = json.loads(body).get("detail", body)
    except (json.JSONDecodeError, AttributeError):
        detail = body.strip()
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', item)}" if isinstance(item, dict)
            else str(item) for item in detail)
    return str(detail or error.reason or f"HTTP {error.code}")


def _filename(disposition: str) -> str | None:
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", disposition or "")
    return urllib.parse.unquote(match.group(1)) if match else None


def encode_multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """multipart/form-data body: `fields` name -> text, `files` name -> (file name, bytes)."""
    boundary = "----MedAnomaly" + uuid.uuid4().hex
    chunks = []
    for name, value in fields.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        chunks.append(str(value).encode() + b"\r\n")
    for name, (filename, content) in files.items():
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      f"Content-Type: {kind}\r\n\r\n".encode())
        chunks.append(content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def parse_multipart(payload: bytes, content_type: str) -> dict:
    """name -> (file name or None, bytes) for each part of a multipart answer."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + payload)
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = (part.get_filename(), part.get_payload(decode=True))
    return parts
