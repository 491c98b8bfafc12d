"""Prepare the datastore for `make serve`: copy the sample films and volumes into an empty datastore folder and
mark the sample films whose names say what they show. Trains nothing: the server serves the shipped checkpoints
of monailabel_app/zoo/ at once (built by `python -m medanomaly zoo build`, see that folder's cards), and any model
can be trained on the datastore with POST /train/<model>.

    python monailabel_app/make_models.py [--studies DIR] [--sample DIR]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parent
os.environ.setdefault("MONAI_LABEL_AUTO_UPDATE_SCORING", "false")
os.environ.setdefault("MONAI_LABEL_DATASTORE_AUTO_RELOAD", "false")
sys.path.insert(0, str(APP_DIR))


def fill_studies(studies: Path, sample: Path) -> None:
    """Copy the sample films and volumes into an empty datastore folder (sample_data/ itself stays untouched)."""
    studies.mkdir(parents=True, exist_ok=True)
    if any(p for p in studies.iterdir() if p.is_file() and not p.name.startswith(".")):
        return
    for folder in sorted(p for p in sample.iterdir() if p.is_dir()):
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.name.startswith("."):
                shutil.copy2(file, studies / file.name)


FINDINGS = {"pneumonia": "pneumonia", "effusion": "Effusion"}  # sample file names that say what the film shows


def mark_sample_findings(datastore) -> None:
    """The sample films whose names say pneumonia or effusion are abnormal (image-level, no mask): they stay out
    of the unsupervised models' training and calibrate the image threshold."""
    for image_id in datastore.list_images():
        info = datastore.get_image_info(image_id) or {}
        for word, finding in FINDINGS.items():
            if word in image_id.lower() and "abnormal" not in info:
                datastore.update_image_info(image_id, {"abnormal": True, "class": finding})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default=str(APP_DIR / "studies"))
    parser.add_argument("--sample", default=str(REPO / "sample_data"))
    parser.add_argument("--fill-only", action="store_true", help="accepted for older callers: filling is all it does")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from lib.datastores import AtomicLocalDatastore
    from main import FILE_EXTENSIONS

    studies = Path(args.studies)
    fill_studies(studies, Path(args.sample))
    mark_sample_findings(AtomicLocalDatastore(str(studies), extensions=FILE_EXTENSIONS, auto_reload=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
