"""The training loop, kept apart from the models: data streamed from disk, a time budget kept to the step,
mid-epoch checkpoints that resume exactly, and the same code on one process or under `torchrun` (DDP).

Data. Training items hold file paths (manifest cases), not pixels. A MONAI `CacheDataset` loads them: by default it
caches nothing and every visit reads the file in a `DataLoader` worker; `cache_mb` > 0 keeps as many decoded
images in memory as fit in that many megabytes (the first ones in manifest order, measured on the first image).
Each visit of an item calls the model's `training_samples(item, rng)`; a method that cuts many samples from one
film (patches) draws `samples_per_visit()` of them with that rng, so no film's patches are ever all materialised.
A batch of `batch_size` samples is made of `batch_size // samples_per_visit()` items.

Order. Items are visited in a permutation seeded by (seed, epoch) (`DistributedSampler`, also with one process),
each visit's rng is seeded by (seed, epoch, item) and each step's torch/numpy rng by (seed, epoch, step, rank), so
a run stopped at any step and resumed takes exactly the steps of an uninterrupted run.

Budget. After every optimiser step the elapsed time is checked against `minutes` (and `should_stop()`): on expiry the
loop writes a mid-epoch checkpoint, calibrates and returns, at most one step late. A checkpoint is also written
every `checkpoint_minutes` and at the end of each epoch, so a killed run loses at most that much.

Distributed. Under `torchrun` (WORLD_SIZE > 1) the loss is wrapped in DistributedDataParallel (NCCL on GPUs, gloo
on CPUs), each rank reads its share of every global batch, and `batch_size` and `learning_rate` are per process:
the global batch is `batch_size x world size`, and DDP averages the gradients, so N processes with batch B match
one process with batch N x B and the same learning rate. BatchNorm layers become SyncBatchNorm on GPUs; on CPUs
(gloo) torch has no SyncBatchNorm, so each process normalises over its own share of the batch and a network with
BatchNorm matches one process only approximately. Only rank 0 writes checkpoints and calibrates.
Statistics-fitted models get their rank's contiguous share of the items (`shard`) and merge what they
measured with `gather_lists`, so they are fitted once on all the data, not N times."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.data import CacheDataset
from monai.transforms import Transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .errors import MedAnomalyError, UnsupportedImageError
from .seeding import seeded

# Config keys of the loop; every model has them (merged into the base defaults).
TRAINING_DEFAULTS = {
    "num_workers": 2,  # DataLoader worker processes that read and preprocess the next batches during a step
    "cache_mb": 0,  # decoded images kept in memory, in megabytes; 0 streams every image from disk on every visit
    "checkpoint_minutes": 5.0,  # a mid-epoch checkpoint at most this often (and at every epoch end, and on stop)
}
# Calibration without a validation set uses at most this many training items (drawn with the seed): predicting
# every film of a 50,000-film training set would take longer than the training.
CALIBRATION_ITEMS_FROM_TRAINING = 200


# ---------------------------------------------------------------------------------------------- distribution


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def distributed_session():
    """Join the process group `torchrun` describes (WORLD_SIZE, RANK, LOCAL_RANK...): NCCL with one GPU per
    process when CUDA is present, else gloo. A plain single process passes through untouched."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "auto" then means this rank's GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(items: list) -> list:
    """This rank's contiguous share of `items` (all of them on one process). Rank order = item order, so
    `gather_lists` of per-item results comes back in the order one process would have produced."""
    count, size = len(items), world_size()
    start, stop = count * rank() // size, count * (rank() + 1) // size
    return list(items[start:stop])


def gather_lists(local: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank (the list itself on one process).
    For statistics-fitted models: per-item arrays measured on this rank's `shard` -> those of all items."""
    if world_size() == 1:
        return list(local)
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, list(local))
    return [entry for part in gathered for entry in part]


# ---------------------------------------------------------------------------------------------- items


class LazyItem:
    """A manifest case as a training item: label and abnormality without reading a pixel, and the pixels
    (`image`, `mask`, `roi`) read from disk on access (the last few reads are reused, nothing more is kept)."""

    def __init__(self, case):
        self.case = case
        self.label = case.label
        self.is_abnormal = case.is_abnormal

    def load(self):
        return _load_recent(self.case)

    image = property(lambda self: self.load().image)
    mask = property(lambda self: self.load().mask)
    roi = property(lambda self: self.load().roi)

    def __repr__(self):
        return f"LazyItem({self.case.image})"


_RECENT: dict = {}  # id(case) -> (case, loaded); a hook reading .image then .roi of one item reads the file once


def _load_recent(case):
    key = id(case)
    if key not in _RECENT:
        if len(_RECENT) >= 2:
            _RECENT.pop(next(iter(_RECENT)))
        _RECENT[key] = (case, load_training_case(case))
    return _RECENT[key][1]


def load_training_case(case):
    """A case's pixels; any failure is an UnsupportedImageError that names the file."""
    from .data.manifest import load_case

    try:
        return load_case(case)
    except (OSError, ValueError, RuntimeError) as error:
        raise UnsupportedImageError(f"training image {case.image} cannot be used: {error}") from None


def training_items(data) -> list:
    """Training data as items that hold paths when they come from a manifest (a CSV path or Cases): a list of
    LazyItem. Images already in memory (MedicalImages, arrays, loaded cases) stay as they are."""
    from .base import as_items
    from .data.manifest import Case, read_manifest

    if data is None:
        return []
    if isinstance(data, (str, Path)):
        data = read_manifest(data)
    data = list(data)
    if data and all(isinstance(entry, Case) for entry in data):
        return [LazyItem(case) for case in data]
    return as_items(data)


def probe_items(items: list) -> None:
    """Refuse, before the first step, a manifest image that cannot be read: a missing file, content that is no
    image, a JPEG/PNG cut short, an unreadable header. Reads only headers and file tails, so it takes seconds for
    thousands of films; damage deeper inside a file is reported, naming the file, when the item is first read."""
    import SimpleITK as sitk

    from .io.reader import ITK_IMAGE_IO, _refuse_truncated_film, detect_format

    for item in items:
        if not isinstance(item, LazyItem):
            continue
        path = Path(item.case.image)
        try:
            if not path.is_file() or path.stat().st_size == 0:
                raise UnsupportedImageError("missing or empty file")
            image_format = detect_format(path)
            _refuse_truncated_film(path, image_format)
            if image_format in ITK_IMAGE_IO:
                reader = sitk.ImageFileReader()
                reader.SetImageIO(ITK_IMAGE_IO[image_format])
                reader.SetFileName(str(path))
                reader.ReadImageInformation()
        except (OSError, ValueError, RuntimeError) as error:
            raise UnsupportedImageError(f"training image {path} cannot be used: {error}") from None


class LoadItem(Transform):
    """MONAI transform: a training item -> an item with pixels (a deterministic step, so CacheDataset may cache
    it). Items already in memory pass through."""

    def __call__(self, item):
        return item.load() if isinstance(item, LazyItem) else item


class TrainingSamples(Dataset):
    """Index (epoch, i) -> the samples of one visit of item i: read (or taken from the capped cache), then the
    model's `training_samples(item, rng)` with an rng seeded by (seed, epoch, i), at most `per_visit` of them."""

    def __init__(self, model, items: list, cache_mb: float, seed: int):
        self.model, self.items, self.seed = model, items, int(seed)
        self.per_visit = max(1, int(model.samples_per_visit()))
        self.loaded = CacheDataset(items, transform=LoadItem(), cache_num=self._cache_count(cache_mb),
                                   num_workers=None, progress=False, copy_cache=False)

    def _cache_count(self, cache_mb: float) -> int:
        """How many decoded items fit in `cache_mb` megabytes, measured on the first item."""
        if not cache_mb or cache_mb <= 0 or not self.items:
            return 0
        first = LoadItem()(self.items[0])
        arrays = [first.image.array, getattr(first, "mask", None), getattr(first, "roi", None)]
        size = sum(np.asarray(a).nbytes for a in arrays if a is not None)
        return min(len(self.items), int(cache_mb * 2**20 // max(size, 1)))

    @property
    def cached(self) -> int:
        return self.loaded.cache_num

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> list:
        epoch, index = key
        try:
            item = self.loaded[index]
        except Exception as error:  # MONAI wraps a transform's error in RuntimeError: report the reason itself
            raise _named_error(error, self.items[index]) from None
        rng = np.random.default_rng([self.seed, epoch, index])
        try:
            samples = list(self.model.training_samples(item, rng))
        except MedAnomalyError:
            raise
        except (ValueError, RuntimeError) as error:
            where = getattr(getattr(item, "case", None), "image", None) or f"item {index}"
            raise UnsupportedImageError(f"training image {where} cannot be used: {error}") from None
        if len(samples) > self.per_visit:
            chosen = np.sort(rng.choice(len(samples), self.per_visit, replace=False))
            samples = [samples[k] for k in chosen]
        return samples


def _named_error(error: Exception, item) -> MedAnomalyError:
    cause = error
    while cause is not None and not isinstance(cause, MedAnomalyError):
        cause = cause.__cause__
    if cause is not None:
        return cause
    where = item.case.image if isinstance(item, LazyItem) else repr(item)[:80]
    return UnsupportedImageError(f"training image {where} cannot be used: {error}")


def collate_samples(visits: list[list[tuple]]):
    """Samples of several visits -> one tuple of stacked tensors, or None when the visits gave no sample."""
    samples = [sample for visit in visits for sample in visit]
    if not samples:
        return None
    return tuple(torch.as_tensor(np.stack([s[k] for s in samples])) for k in range(len(samples[0])))


class EpochOrder(torch.utils.data.Sampler):
    """This rank's items of one epoch, from `start` on, as (epoch, index): DistributedSampler's seeded permutation
    (one process is rank 0 of 1), so one process and N processes visit the same global batches."""

    def __init__(self, count: int, epoch: int, seed: int, start: int = 0):
        self.order = DistributedSampler(range(count), num_replicas=world_size(), rank=rank(), shuffle=True,
                                        seed=seed, drop_last=False)
        self.order.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self):
        return ((self.epoch, index) for index in list(self.order)[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.order) - self.start)


# ---------------------------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """What `fit(on_progress=...)` receives after every optimiser step (also as `asdict(progress)`)."""

    epoch: int  # 1-based epoch in progress
    epochs: int
    step: int  # steps done in this epoch
    steps_per_epoch: int
    steps_done: int  # steps done in the whole run, resumed runs included
    loss: float  # this step's loss (averaged over ranks)
    elapsed_seconds: float  # since this fit() call started
    budget_left_seconds: float | None  # None without a time budget
    epoch_seconds_estimate: float  # estimated wall time of one whole epoch at the current step rate
    seconds_per_step: float

    def line(self) -> str:
        left = "no budget" if self.budget_left_seconds is None else f"{self.budget_left_seconds / 60:.1f} min left"
        return (f"epoch {self.epoch}/{self.epochs} step {self.step}/{self.steps_per_epoch} "
                f"loss {self.loss:.4f} | {left} | epoch ~{self.epoch_seconds_estimate / 60:.1f} min "
                f"({self.seconds_per_step:.2f} s/step)")

    def as_dict(self) -> dict:
        return asdict(self)


class _ProgressDisplay:
    """A tqdm bar on a terminal; elsewhere (a log file, a server's captured output) the progress line every 30 s,
    since a redrawn bar written to a file is a stream of carriage-return frames."""

    LOG_EVERY_SECONDS = 30.0

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.enabled, self.desc, self.last_line = enabled, desc, 0.0
        self.terminal = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False) if self.terminal else None

    def show(self, report: Progress) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {report.loss:.4f} | " + report.line().split(" | ", 1)[1])
        elif self.enabled and (time.perf_counter() - self.last_line >= self.LOG_EVERY_SECONDS
                               or report.step == report.steps_per_epoch):
            self.last_line = time.perf_counter()
            print(report.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------- the loop


class _LossModule(torch.nn.Module):
    """The model's training loss as a module, so DDP sees every parameter the loss uses, whichever network
    methods (encode, decode...) the loss calls."""

    def __init__(self, model):
        super().__init__()
        self.network = model.network
        self._loss = model.training_loss

    def forward(self, *batch):
        return self._loss(*batch)


def step_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _all_ranks(values: list[float], op) -> list[float]:
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=op)
    return tensor.cpu().tolist()


def fit_model(model, train, val=None, *, checkpoint=None, minutes=None, progress=True, on_epoch_end=None,
              on_progress=None, should_stop=None) -> list[dict]:
    """`AnomalyModel.fit` (see there): resume, train by gradient or by statistics, calibrate, save."""
    started = time.perf_counter()
    if checkpoint is not None and Path(checkpoint).exists():
        model._resume_from(checkpoint)
    items = model.select_training_items(training_items(train))
    if not items:
        raise ValueError(f"{model.name}: no training images (unsupervised models need normal images)")
    probe_items(items)
    if model.fitting == "statistics":
        history = _fit_by_statistics(model, items, started)
        if on_epoch_end is not None:
            on_epoch_end(history[-1])
    else:
        history = _fit_by_gradient(model, items, checkpoint, started, minutes, progress, on_epoch_end,
                                   on_progress, should_stop)
    if rank() != 0:
        return history  # rank 0 calibrates and writes the checkpoint once
    model.train_state["finished"] = True
    model.calibrate(*_calibration_set(model, val, items))
    if checkpoint is not None:
        model.save(checkpoint)
    return history


def _calibration_set(model, val, items):
    if val is not None:
        return val, "validation"
    chosen = items
    if len(items) > CALIBRATION_ITEMS_FROM_TRAINING:
        rng = np.random.default_rng(int(model.config["seed"]))
        chosen = [items[k] for k in sorted(rng.choice(len(items), CALIBRATION_ITEMS_FROM_TRAINING, replace=False))]
    return [item.case if isinstance(item, LazyItem) else item for item in chosen], "training"


def _fit_by_statistics(model, items, started) -> list[dict]:
    record = {"epoch": 1, **model.fit_statistics(shard(items)), "seconds": time.perf_counter() - started}
    model._weights_sha = None
    model.train_state.update({"epoch": 1, "history": [record], "finished": True})
    return model.train_state["history"]


def _fit_by_gradient(model, items, checkpoint, started, minutes, progress, on_epoch_end, on_progress,
                     should_stop) -> list[dict]:
    config = model.config
    seed, epochs = int(config["seed"]), int(config["epochs"])
    dataset = TrainingSamples(model, items, float(config["cache_mb"]), seed)
    items_per_step = max(1, int(config["batch_size"]) // dataset.per_visit)
    order_length = len(EpochOrder(len(items), 0, seed))  # this rank's items per epoch
    steps_per_epoch = math.ceil(order_length / items_per_step)
    optimizer = model.make_optimizer()
    if model._optimizer_state is not None:
        optimizer.load_state_dict(model._optimizer_state)
    distributed = world_size() > 1
    loss_module = _LossModule(model)
    if distributed:
        device_ids = [model.device.index or 0] if model.device.type == "cuda" else None
        if device_ids:  # BatchNorm over the global batch, as one process would compute it (GPUs only in torch)
            loss_module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(loss_module)
        loss_module = torch.nn.parallel.DistributedDataParallel(loss_module, device_ids=device_ids,
                                                                find_unused_parameters=True)
    state = model.train_state
    state.setdefault("step", 0)
    state.setdefault("steps_done", state["epoch"] * steps_per_epoch)
    budget = None if minutes is None else float(minutes) * 60
    last_save = time.perf_counter()
    step_times: list[float] = []
    returned = list(state["history"])

    def save():
        nonlocal last_save
        model._optimizer_state = optimizer.state_dict()
        model._weights_sha = None
        if checkpoint is not None and rank() == 0:
            model.save(checkpoint)
        last_save = time.perf_counter()

    stopped = False
    # each step forks only the RNG of this process's own GPU (every GPU's state each step would be wasted copies)
    cuda = model.device.type == "cuda"
    step_devices = [model.device.index if model.device.index is not None else torch.cuda.current_device()] if cuda else []
    for epoch in range(state["epoch"], epochs):
        start_step = state["step"] if state.get("partial") else 0
        partial = state.get("partial") or {"losses": [], "samples": 0, "seconds": 0.0}
        loader = DataLoader(dataset, batch_size=items_per_step, collate_fn=collate_samples,
                            sampler=EpochOrder(len(items), epoch, seed, start_step * items_per_step),
                            num_workers=int(config["num_workers"]))
        model.network.train()
        tick = time.perf_counter()
        bar = _ProgressDisplay(progress and rank() == 0, steps_per_epoch, start_step,
                               f"{model.name} epoch {epoch + 1}/{epochs}")
        step = start_step
        for batch in loader:
            present = _all_ranks([0.0 if batch is None else 1.0], dist.ReduceOp.MIN if distributed else None)[0]
            loss_value = float("nan")
            if present:  # a batch only of items without samples (e.g. slices without brain) is skipped everywhere
                # Noise, dropout and masks of this step drawn from a per-step seed: a resumed run takes exactly the
                # steps of an uninterrupted one, and the caller's random state is left alone.
                with seeded(step_seed(seed, epoch, step, rank()), devices=step_devices):
                    loss = loss_module(*[tensor.to(model.device) for tensor in batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                loss_value = float(loss.detach())
                partial["samples"] += len(batch[0])
            step += 1
            state["steps_done"] += 1
            over = budget is not None and time.perf_counter() - started >= budget
            asked = should_stop is not None and bool(should_stop())
            loss_value, stop = _all_ranks([loss_value, float(over or asked)],
                                          dist.ReduceOp.SUM if distributed else None)
            loss_value /= world_size()
            if present:
                partial["losses"].append(loss_value)
            now = time.perf_counter()
            step_times.append(now - tick)  # data waiting included: what a step really costs
            partial["seconds"] += now - tick
            tick = now
            state["step"], state["partial"] = step, partial
            seconds_per_step = float(np.mean(step_times[-50:]))
            report = Progress(epoch=epoch + 1, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch,
                              steps_done=state["steps_done"], loss=loss_value, elapsed_seconds=now - started,
                              budget_left_seconds=None if budget is None else max(0.0, budget - (now - started)),
                              epoch_seconds_estimate=seconds_per_step * steps_per_epoch,
                              seconds_per_step=seconds_per_step)
            bar.show(report)
            if on_progress is not None and rank() == 0:
                on_progress(report)
            if stop:
                stopped = True
                break
            if now - last_save >= float(config["checkpoint_minutes"]) * 60 and step < steps_per_epoch:
                save()
        bar.close()
        del loader
        if stopped and step < steps_per_epoch:
            save()
            returned = list(state["history"]) + [_record(epoch, partial, complete=False)]
            break
        if state["epoch"] == 0 and not partial["losses"]:
            raise ValueError(f"{model.name}: the training images gave no training samples")
        record = _record(epoch, partial, complete=True)
        state["history"].append(record)
        state.update({"epoch": epoch + 1, "step": 0, "partial": None})
        save()
        returned = list(state["history"])
        if on_epoch_end is not None:
            on_epoch_end(record)
        if stopped:
            break
    return returned


def _record(epoch: int, partial: dict, complete: bool) -> dict:
    losses = partial["losses"]
    record = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
              "seconds": float(partial["seconds"]), "samples": int(partial["samples"]), "steps": len(losses)}
    if not complete:
        record["complete"] = False
    return record
