"""Preview an anomaly map without Slicer, through the same logic the module uses:

    cd MedAnomalySlicer && python -m MedAnomalyLib preview --server http://127.0.0.1:8000 --model ae \\
        --image film.jpeg --out overlay.png [--threshold 0.2] [--opacity 0.5] [--colours anomaly]

Writes the film with the heatmap overlaid as Slicer shows it (middle slice of a volume) and prints the score.
Needs SimpleITK to read the image and write the PNG (the project's environment has it).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .errors import MedAnomalyError
from .heatmap import COLOUR_MAPS, blend_overlay, colour_lut, display_window
from .logic import AnomalyWorkflow
from .volume import Volume, read_volume


def preview(server: str, model: str, image: str, out: str, threshold=None, opacity=0.5, colours="anomaly") -> str:
    import SimpleITK as sitk

    if image.lower().endswith((".png", ".jpg", ".jpeg", ".bmp")):  # a film, loaded as Slicer would
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(image))
        volume = (Volume.from_slicer_array(pixels[np.newaxis], np.diag([-1.0, -1.0, 1.0, 1.0])) if pixels.ndim == 3
                  else Volume.film(pixels))
    else:
        volume = read_volume(image)
    workflow = AnomalyWorkflow()
    try:
        workflow.connect(server)
        _finish(workflow)
        workflow.compute(volume, model, name=image.rsplit("/", 1)[-1])
        _finish(workflow)
        result = workflow.result
        if threshold is not None:
            workflow.set_threshold(threshold)
        middle = result.heatmap.shape[0] // 2
        window = display_window(result.heatmap.array, workflow.threshold)
        picture = blend_overlay(volume.array[middle], result.heatmap.array[middle], colour_lut(colours, 256, 0.02),
                                window, opacity)
        sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=True), out)
        return f"{result.summary()}. {workflow.threshold_summary()}. Overlay written to {out}"
    finally:
        workflow.cleanup()


def _finish(workflow: AnomalyWorkflow) -> None:
    state = workflow.wait(3600)
    if state is not None and state.error:
        raise MedAnomalyError(state.error)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MedAnomalyLib", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("preview", help="score one image on a server and write the overlay PNG")
    command.add_argument("--server", required=True)
    command.add_argument("--model", required=True)
    command.add_argument("--image", required=True)
    command.add_argument("--out", required=True)
    command.add_argument("--threshold", type=float)
    command.add_argument("--opacity", type=float, default=0.5)
    command.add_argument("--colours", choices=sorted(COLOUR_MAPS), default="anomaly")
    args = parser.parse_args(argv)
    try:
        print(preview(args.server, args.model, args.image, args.out, args.threshold, args.opacity, args.colours))
    except MedAnomalyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
