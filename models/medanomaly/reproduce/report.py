"""A paper's report folder: Markdown tables with the paper's figure beside ours, PNG figures, and the deviations.

Everything is written into a staging folder first and swapped in at the end, so an interrupted run never leaves a
report that mixes two runs. `results.json` holds the same tables as numbers, for tests and for other tools.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..visualize import save_figure

BUDGETS = ("smoke", "quick", "full")


@dataclass(frozen=True)
class Versus:
    """One table cell: our figure, with the paper's beside it (None where the paper gives none)."""
    ours: float | None
    paper: float | None = None

    def render(self, digits: int) -> str:
        ours = _format(self.ours, digits)
        return ours if self.paper is None else f"{ours} ({_format(self.paper, digits)})"


def _format(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def _machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()} CPU cores"


def _plain(value):
    if isinstance(value, Versus):
        return {"ours": _plain(value.ours), "paper": _plain(value.paper)}
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return value


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""
    digits: int = 3

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        for row in self.rows:
            cells = [cell.render(self.digits) if isinstance(cell, Versus) else _format(_plain(cell), self.digits)
                     for cell in row]
            lines.append("| " + " | ".join(cells) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)


@dataclass
class Report:
    """What one `reproduce` run found. Tables, figures, text and deviations appear in the order they were added."""
    paper: str
    title: str
    citation: str
    budget: str
    out: Path
    sections: list = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    cpu_started: float = field(default_factory=time.process_time)

    def __post_init__(self):
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, not {self.budget!r}")
        self.out = Path(self.out)
        self.staging = self.out.parent / f".{self.out.name}.partial"
        shutil.rmtree(self.staging, ignore_errors=True)
        (self.staging / "figures").mkdir(parents=True)

    def table(self, title: str, columns: list[str], rows: list[list], note: str = "", digits: int = 3) -> Table:
        """Add a table. A cell is a number, a string, None, or `Versus(ours, paper)`."""
        if any(len(row) != len(columns) for row in rows):
            raise ValueError(f"table {title!r}: every row needs {len(columns)} cells")
        table = Table(title, list(columns), [list(row) for row in rows], note, digits)
        self.sections.append(table)
        return table

    def figure(self, name: str, figure, caption: str) -> Path:
        """Save a matplotlib figure as figures/NAME.png and show it in the report."""
        path = save_figure(figure, self.staging / "figures" / f"{name}.png")
        self.sections.append(("figure", name, caption))
        return path

    def text(self, paragraph: str) -> None:
        self.sections.append(("text", paragraph))

    def deviation(self, what: str) -> None:
        """A difference from the paper's protocol, and why."""
        self.deviations.append(what)

    def markdown(self, seconds: float, cpu_seconds: float) -> str:
        parts = [f"# {self.title}", "", f"*{self.citation}*", "",
                 f"Budget `{self.budget}`: {seconds / 60:.1f} min wall, {cpu_seconds / 60:.1f} CPU-min on "
                 f"{_machine()}. In the tables a cell reads `ours (paper)`; — where one side has no figure.", ""]
        for section in self.sections:
            if isinstance(section, Table):
                parts += [section.markdown(), ""]
            elif section[0] == "figure":
                parts += [f"![{section[2]}](figures/{section[1]}.png)", "", f"*{section[2]}*", ""]
            else:
                parts += [section[1], ""]
        parts += ["## Deviations from the paper", ""]
        parts += [f"- {what}" for what in self.deviations] or ["- none"]
        return "\n".join(parts) + "\n"

    def write(self) -> Path:
        """Write report.md and results.json, then swap the staging folder in for `out`."""
        seconds, cpu_seconds = time.monotonic() - self.started, time.process_time() - self.cpu_started
        (self.staging / "report.md").write_text(self.markdown(seconds, cpu_seconds), encoding="utf-8")
        results = {
            "paper": self.paper, "budget": self.budget, "minutes": round(seconds / 60, 2),
            "cpu_minutes": round(cpu_seconds / 60, 2), "machine": _machine(),
            "tables": [{"title": t.title, "columns": t.columns,
                        "rows": [[_plain(cell) for cell in row] for row in t.rows]}
                       for t in self.sections if isinstance(t, Table)],
            "figures": [s[1] for s in self.sections if isinstance(s, tuple) and s[0] == "figure"],
            "deviations": self.deviations,
        }
        (self.staging / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        previous = self.out.parent / f".{self.out.name}.previous"
        shutil.rmtree(previous, ignore_errors=True)
        if self.out.exists():
            os.replace(self.out, previous)
        os.replace(self.staging, self.out)
        shutil.rmtree(previous, ignore_errors=True)
        return self.out / "report.md"

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
