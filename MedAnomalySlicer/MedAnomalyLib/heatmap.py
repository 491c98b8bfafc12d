"""Local work on a downloaded heatmap: re-thresholding (the slider never calls the server) and colour tables."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Colour maps as anchor points (position, r, g, b) interpolated linearly; written here because Slicer's Python has
# no matplotlib. "anomaly" runs dark red -> yellow -> white: a map that reads as heat over a grey film.
COLOUR_MAPS = {
    "anomaly": [(0.0, 0.25, 0.0, 0.0), (0.35, 0.8, 0.05, 0.0), (0.7, 1.0, 0.65, 0.0), (1.0, 1.0, 1.0, 0.85)],
    "hot": [(0.0, 0.0, 0.0, 0.0), (0.375, 1.0, 0.0, 0.0), (0.75, 1.0, 1.0, 0.0), (1.0, 1.0, 1.0, 1.0)],
    "jet": [(0.0, 0.0, 0.0, 0.5), (0.125, 0.0, 0.0, 1.0), (0.375, 0.0, 1.0, 1.0), (0.625, 1.0, 1.0, 0.0),
            (0.875, 1.0, 0.0, 0.0), (1.0, 0.5, 0.0, 0.0)],
    "grey": [(0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 1.0)],
}


def threshold_mask(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """The anomaly labelmap for a threshold: 1 where heatmap >= threshold (the server's convention), else 0."""
    with np.errstate(invalid="ignore"):  # NaN compares False: a missing value is never flagged
        return (np.asarray(heatmap) >= float(threshold)).astype(np.uint8)


@dataclass(frozen=True)
class ThresholdScale:
    """Maps an integer slider position to a heatmap threshold over the heatmap's value range."""

    minimum: float
    maximum: float
    steps: int = 1000

    @classmethod
    def for_heatmap(cls, heatmap: np.ndarray, threshold: float | None = None, steps: int = 1000) -> "ThresholdScale":
        finite = np.asarray(heatmap, dtype=float)
        finite = finite[np.isfinite(finite)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if threshold is not None and np.isfinite(threshold):  # keep the calibrated threshold reachable
            low, high = min(low, float(threshold)), max(high, float(threshold))
        if high <= low:
            high = low + 1.0
        return cls(low, high, steps)

    def threshold(self, position: int) -> float:
        position = min(max(int(position), 0), self.steps)
        return self.minimum + (self.maximum - self.minimum) * position / self.steps

    def position(self, threshold: float) -> int:
        fraction = (float(threshold) - self.minimum) / (self.maximum - self.minimum)
        return int(round(min(max(fraction, 0.0), 1.0) * self.steps))

    @property
    def single_step(self) -> float:
        return (self.maximum - self.minimum) / self.steps


def colour_lut(name: str = "anomaly", size: int = 256, transparent_below: float = 0.0) -> np.ndarray:
    """RGBA look-up table (size, 4) as uint8. Entries below `transparent_below` (a fraction) are fully transparent,
    so that normal tissue keeps showing the film under the overlay."""
    if name not in COLOUR_MAPS:
        raise ValueError(f"unknown colour map '{name}'; choose one of {sorted(COLOUR_MAPS)}")
    if size < 2:
        raise ValueError("a colour table needs at least 2 entries")
    anchors = np.array(COLOUR_MAPS[name], dtype=float)
    positions = np.linspace(0.0, 1.0, size)
    rgb = np.stack([np.interp(positions, anchors[:, 0], anchors[:, c]) for c in (1, 2, 3)], axis=1)
    alpha = np.where(positions < transparent_below, 0.0, 1.0)
    return np.round(np.column_stack([rgb, alpha]) * 255).astype(np.uint8)


def slicer_colour_table_text(lut: np.ndarray, name: str = "MedAnomalyHeat") -> str:
    """The colour table as a Slicer `.ctbl` file (index name R G B A per line), loadable with
    slicer.util.loadColorTable or the Data module."""
    lut = np.asarray(lut)
    if lut.ndim != 2 or lut.shape[1] != 4:
        raise ValueError(f"a colour table is an (N, 4) RGBA array, got shape {lut.shape}")
    lines = [f"# Color table file {name}.ctbl", f"# {len(lut)} values"]
    lines += [f"{index} {name}{index} {r} {g} {b} {a}" for index, (r, g, b, a) in enumerate(lut.astype(int))]
    return "\n".join(lines) + "\n"


def parse_slicer_colour_table(text: str) -> np.ndarray:
    """Read back a `.ctbl` text into an (N, 4) uint8 array (indices must run 0..N-1)."""
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        rows.append((int(parts[0]), [int(v) for v in parts[2:6]]))
    rows.sort()
    if [index for index, _ in rows] != list(range(len(rows))):
        raise ValueError("colour table indices must run 0..N-1")
    return np.array([rgba for _, rgba in rows], dtype=np.uint8)


def display_window(heatmap: np.ndarray, threshold: float | None = None) -> tuple[float, float]:
    """(lower, upper) heatmap values mapped onto the colour table's ends. With a threshold, the colours start at
    the threshold, so everything shown coloured is at least as anomalous as the current cut."""
    values = np.asarray(heatmap, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    upper = float(np.percentile(values, 99.9))
    lower = float(threshold) if threshold is not None and np.isfinite(threshold) else float(values.min())
    if upper <= lower:
        upper = max(float(values.max()), lower + 1e-6)
    return lower, upper


def anomalous_fraction(mask: np.ndarray) -> float:
    mask = np.asarray(mask)
    return float(mask.mean()) if mask.size else 0.0


def blend_overlay(background: np.ndarray, heatmap: np.ndarray, lut: np.ndarray, window: tuple[float, float],
                  opacity: float = 0.5) -> np.ndarray:
    """An RGB picture of one slice as Slicer shows it: the grey background (1st-99th percentile window) under the
    heatmap mapped through the colour table over `window`, each colour's alpha times the foreground opacity."""
    background = np.asarray(background, dtype=float)
    heatmap = np.asarray(heatmap, dtype=float)
    if background.shape != heatmap.shape or background.ndim != 2:
        raise ValueError(f"background {background.shape} and heatmap {heatmap.shape} must be the same 2D grid")
    low, high = np.percentile(background, [1, 99])
    grey = np.clip((background - low) / max(high - low, 1e-12), 0, 1)[..., np.newaxis].repeat(3, axis=-1)
    lower, upper = window
    position = np.clip((np.nan_to_num(heatmap, nan=lower) - lower) / max(upper - lower, 1e-12), 0, 1)
    colours = np.asarray(lut, dtype=float)[np.round(position * (len(lut) - 1)).astype(int)] / 255.0
    alpha = colours[..., 3:4] * float(np.clip(opacity, 0, 1))
    return np.round((grey * (1 - alpha) + colours[..., :3] * alpha) * 255).astype(np.uint8)
