"""MedAnomaly's Slicer logic in plain Python: no `slicer` or Qt import, so pytest runs it without Slicer."""
from .client import ModelInfo, MonaiLabelClient, make_image_id
from .errors import JobCancelled, MedAnomalyError, ServerError, ServerUnreachable, VolumeFormatError
from .heatmap import (COLOUR_MAPS, ThresholdScale, colour_lut, display_window, parse_slicer_colour_table,
                      slicer_colour_table_text, threshold_mask)
from .jobs import Job, JobContext, JobState, run_job
from .logic import AnomalyMapResult, AnomalyWorkflow, NextSample
from .parameters import DEFAULT_SERVER_URL, Parameters
from .signals import Signal
from .volume import Volume, read_volume, write_volume

__all__ = [
    "ModelInfo", "MonaiLabelClient", "make_image_id", "JobCancelled", "MedAnomalyError", "ServerError",
    "ServerUnreachable", "VolumeFormatError", "COLOUR_MAPS", "ThresholdScale", "colour_lut", "display_window",
    "parse_slicer_colour_table", "slicer_colour_table_text", "threshold_mask", "Job", "JobContext", "JobState",
    "run_job", "AnomalyMapResult", "AnomalyWorkflow", "NextSample", "DEFAULT_SERVER_URL", "Parameters", "Signal",
    "Volume", "read_volume", "write_volume",
]
