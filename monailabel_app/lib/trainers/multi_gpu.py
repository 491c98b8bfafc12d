"""MONAI Label's `multi_gpu` and `gpus` train settings, honoured with the same DDP path as the command line.

- `gpus`: "all" (the default) or GPU ids such as "0,1". MONAI Label itself turns ids into CUDA_VISIBLE_DEVICES for
  the training subprocess, so inside it the GPUs to use are simply the visible ones.
- `multi_gpu`: true (the default, as in MONAI Label's own trainers) trains on every visible GPU at once when there
  are several: `torchrun --nproc_per_node N -m medanomaly train ...`, one process per GPU, DistributedDataParallel
  over NCCL. With one GPU, or none, or `multi_gpu` false, the model trains in the task's own process.

`check_gpu_request` runs in the server before a training is submitted: a request naming GPUs this machine does not
have is refused there (the route answers 400 with the reason) instead of failing later in the background."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch

GPU_REQUEST_KEYS = {"multi_gpu", "gpus"}


def check_gpu_request(params: dict, available: int | None = None) -> dict:
    """`multi_gpu` and `gpus` of a train request, normalised (gpus as "all" or "0,1"), checked against the
    `available` CUDA GPUs (this process's count by default). Raises ValueError with the reason."""
    available = torch.cuda.device_count() if available is None else available
    checked = {}
    if "multi_gpu" in params:
        value = params["multi_gpu"]
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"multi_gpu must be true or false, got {value!r}")
        checked["multi_gpu"] = value
    if "gpus" in params:
        checked["gpus"] = _checked_gpus(params["gpus"], available)
    return checked


def _checked_gpus(value, available: int) -> str:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return "all"
    usage = f'gpus must be "all" or GPU ids such as "0,1", got {value!r}'
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        ids = list(value)
    elif isinstance(value, str):
        try:
            ids = [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(usage) from None
    else:
        raise ValueError(usage)
    if not ids or any(gpu < 0 for gpu in ids) or len(set(ids)) != len(ids):
        raise ValueError(usage)
    named = ",".join(str(gpu) for gpu in ids)
    if available == 0:
        raise ValueError(f"gpus {named!r} names {len(ids)} GPU(s), but this server has no CUDA GPU: "
                         'leave gpus out (or send "all") to train on the CPU')
    missing = [gpu for gpu in ids if gpu >= available]
    if missing:
        have = "1 CUDA GPU (id 0)" if available == 1 else f"{available} CUDA GPUs (ids 0 to {available - 1})"
        raise ValueError(f"gpus {named!r} names {len(ids)} GPU(s), but this server has {have}: "
                         f"no GPU {','.join(map(str, missing))}")
    return named


def processes_for(request: dict) -> int:
    """How many training processes a (checked) request asks for: the visible GPUs when multi_gpu, else 1."""
    visible = torch.cuda.device_count()
    return visible if request.get("multi_gpu", True) and visible > 1 else 1


def write_manifests(folder: Path, train: list, val: list | None, datastore) -> tuple[Path, Path | None]:
    """The datastore items as the command line's CSV manifests: image files where the datastore has them,
    else (a DICOMweb series folder) the image written as NRRD; lesion masks written as NRRD on the image's grid."""
    from medanomaly.data.manifest import write_manifest
    from medanomaly.io import write_image

    files = folder / "images"
    files.mkdir(parents=True, exist_ok=True)

    def rows(items):
        for number, item in enumerate(items):
            uri = Path(datastore.get_image_uri(item.id)) if getattr(item, "id", None) else None
            if uri is None or not uri.is_file():
                uri = write_image(item.image, files / f"image-{number:05d}.nrrd")
            row = {"image": uri, "label": item.label}
            if item.mask is not None:
                row["mask"] = write_image(item.image, files / f"mask-{number:05d}.nrrd", array=item.mask)
            yield row

    train_csv = write_manifest(list(rows(train)), folder / "train.csv")
    val_csv = write_manifest(list(rows(val)), folder / "val.csv") if val else None
    return train_csv, val_csv


def torchrun_command(name: str, processes: int, train_csv: Path, val_csv: Path | None, checkpoint: Path,
                     settings: dict, minutes: float | None) -> list[str]:
    """`torchrun --nproc_per_node N -m medanomaly train ...` with this interpreter (torch.distributed.run is
    what the `torchrun` script runs)."""
    with socket.socket() as sock:  # a free rendezvous port on this machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "medanomaly", "train", "--model", name, "--manifest", str(train_csv), "--out", str(checkpoint)]
    if val_csv is not None:
        command += ["--val", str(val_csv)]
    if minutes is not None:
        command += ["--minutes", str(minutes)]
    config = [f"{key}={json.dumps(value)}" for key, value in settings.items() if value is not None]
    return command + (["--config", *config] if config else [])


def train_with_torchrun(name: str, processes: int, train: list, val: list | None, datastore, checkpoint: Path,
                        settings: dict, minutes: float | None) -> None:
    """Run the distributed training to completion, its output passed on line by line (MONAI Label shows it in
    the train status); raises RuntimeError with the last lines when it fails."""
    folder = Path(checkpoint).parent / "distributed"
    train_csv, val_csv = write_manifests(folder, train, val, datastore)
    command = torchrun_command(name, processes, train_csv, val_csv, checkpoint, settings, minutes)
    print(f"[{name}] distributed training on {processes} GPUs: {' '.join(command)}", flush=True)
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                          errors="replace") as process:
        for line in process.stdout:
            print(line.rstrip(), flush=True)
            tail = (tail + [line.rstrip()])[-20:]
    if process.returncode != 0:
        raise RuntimeError(f"{name}: distributed training failed (exit code {process.returncode}):\n"
                           + "\n".join(tail))
    shutil.rmtree(folder / "images", ignore_errors=True)  # copies of DICOMweb series; the manifests stay as a record
