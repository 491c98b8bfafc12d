"""Each paper's own protocol, run by one command: `python -m medanomaly reproduce PAPER --budget smoke|quick|full`.

A paper module defines `PAPER = Paper(...)`, whose `reproduce(run)` adds the paper's tables (the paper's figure beside
ours), its figures and every deviation from its protocol to `run.report`. Budgets: `smoke` (seconds, a handful of
real images; run in CI), `quick` (≤ 20 minutes on a 2-core CPU; its reports are committed under `reports/`), `full`
(the paper's protocol, for a GPU or a long CPU run). Trainings are cached under `run.work`, so a rerun resumes.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import MedAnomalyError
from .report import BUDGETS, Report, Versus

# paper name -> module in this package
PAPERS = {
    "ddpm-mammography": "ddpm_mammography",
    "unet-patch-ae": "unet_patch_ae",
    "vlb-vae": "vlb_vae",
    "uncertainty-vae": "uncertainty_vae",
    "gcm": "gcm",
}

__all__ = ["BUDGETS", "PAPERS", "Paper", "Report", "Run", "Versus", "cached_fit", "get_paper", "reproduce"]


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    citation: str
    reproduce: Callable[["Run"], None]


@dataclass
class Run:
    """What a paper's `reproduce` gets: where the data is, where to cache, the budget and the report to fill."""
    data: Path
    work: Path
    budget: str
    report: Report
    device: torch.device
    seed: int = 0

    def pick(self, smoke, quick, full):
        """The value for this run's budget."""
        return {"smoke": smoke, "quick": quick, "full": full}[self.budget]


def cached_fit(checkpoint: Path, make_model: Callable, train, val=None, device=None, **fit_options):
    """A training cached at `checkpoint`: -> (model, history, seconds spent training now). A finished one is loaded
    (0 s); otherwise `make_model()` is fitted there, resuming a stopped run from its mid-epoch checkpoint."""
    from .. import load

    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        model = load(checkpoint, **({"device": str(device)} if device is not None else {}))
        if model.train_state.get("finished"):
            return model, model.train_state.get("history", []), 0.0
    model = make_model()
    started = time.perf_counter()
    history = model.fit(train, val, checkpoint=checkpoint, progress=False, **fit_options)
    return model, history, time.perf_counter() - started


def get_paper(name: str) -> Paper:
    if name not in PAPERS:
        raise MedAnomalyError(f"unknown paper {name!r}; choose one of {', '.join(PAPERS)}")
    return importlib.import_module(f".{PAPERS[name]}", __name__).PAPER


def reproduce(name: str, data: Path, out: Path, budget: str = "quick", work: Path | None = None,
              device: str | None = None, seed: int = 0) -> Path:
    """Run one paper's protocol and write its report folder; returns the path of report.md."""
    paper = get_paper(name)
    data = Path(data)
    if not data.is_dir():
        raise MedAnomalyError(f"data folder not found: {data}")
    work = Path(work) if work else Path("build") / "reproduce" / name / budget
    work.mkdir(parents=True, exist_ok=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    report = Report(paper.name, paper.title, paper.citation, budget, Path(out))
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        paper.reproduce(Run(data, work, budget, report, chosen, seed))
    except BaseException:
        report.discard()
        raise
    return report.write()
