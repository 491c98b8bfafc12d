"""Train first checkpoints for the server on the sample data, quickly on the CPU (`make models`).

Runs the server's own train task for every registered model, each in a forked process, on a datastore folder
(filled from sample_data/ when empty), with a few epochs and a wall-time budget shared among the models. A model
that fails, does not finish within its share (training plus calibration), or whose turn comes after the budget
is spent, is skipped with the reason logged: it can still be trained later through POST /train/<model>.

    python monailabel_app/make_models.py [--studies DIR] [--model-dir DIR] [--models ae,dae] [--minutes 2]
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import sys
import time
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


MIN_SECONDS_FOR_AE = 180  # the baseline is always trained, whatever the budget
FINDINGS = {"pneumonia": "pneumonia", "effusion": "Effusion"}  # sample file names that say what the film shows


def mark_sample_findings(datastore) -> None:
    """The sample films whose names say pneumonia or effusion are abnormal (image-level, no mask): they stay out
    of the unsupervised models' training and calibrate the image threshold."""
    for image_id in datastore.list_images():
        info = datastore.get_image_info(image_id) or {}
        for word, finding in FINDINGS.items():
            if word in image_id.lower() and "abnormal" not in info:
                datastore.update_image_info(image_id, {"abnormal": True, "class": finding})


def _train_child(app, name: str, epochs: int, minutes: float, errors) -> None:
    try:
        app._trainers[name]({"epochs": epochs, "minutes": minutes}, app.datastore())
    except BaseException as error:
        errors.put(f"{type(error).__name__}: {error}".splitlines()[0][:300])
        raise SystemExit(1)


def train_with_limit(app, name: str, epochs: int, minutes: float, seconds: float) -> tuple[bool, str]:
    """Train one model in a forked child (the imports are already done) that is stopped after `seconds`:
    training is bounded by `minutes`, but calibration or a slow sampler is bounded only here."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    child = context.Process(target=_train_child, args=(app, name, epochs, minutes, errors), daemon=True)
    child.start()
    child.join(seconds)
    if child.is_alive():
        child.kill()
        child.join()
        return False, f"did not finish within {seconds:.0f} s on this machine"
    if child.exitcode == 0 and app.models[name].is_trained():
        return True, ""
    return False, errors.get() if not errors.empty() else f"exit code {child.exitcode}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default=str(APP_DIR / "studies"))
    parser.add_argument("--sample", default=str(REPO / "sample_data"))
    parser.add_argument("--model-dir", default=str(APP_DIR / "model"))
    parser.add_argument("--models", default="all", help="comma-separated names (default: every registered model)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-time budget for all models together")
    parser.add_argument("--force", action="store_true", help="retrain models that already have a checkpoint")
    parser.add_argument("--fill-only", action="store_true", help="only fill an empty datastore folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from main import MedAnomalyApp

    studies = Path(args.studies)
    fill_studies(studies, Path(args.sample))
    app = MedAnomalyApp(str(APP_DIR), str(studies), {"model_dir": args.model_dir, "models": args.models})
    mark_sample_findings(app.datastore())
    if args.fill_only:
        return 0
    names = list(app.models)
    if "ae" in names:  # the baseline first: it must exist even when the budget runs out
        names.remove("ae")
        names.insert(0, "ae")
    deadline = time.monotonic() + args.minutes * 60
    trained, skipped = [], []
    for index, name in enumerate(names):
        config = app.models[name]
        if config.is_trained() and not args.force:
            print(f"{name}: already trained ({config.record().get('model_version')})")
            trained.append(name)
            continue
        left = deadline - time.monotonic()
        if name == "ae":
            left = max(left, MIN_SECONDS_FOR_AE)
        if left <= 5:
            skipped.append((name, "time budget spent"))
            continue
        share = left / (len(names) - index)
        limit = left if name == "ae" else max(share, 20)
        started = time.monotonic()
        ok, reason = train_with_limit(app, name, args.epochs, max(share / 120, 0.05), limit)
        if ok:
            trained.append(name)
            print(f"{name}: {config.record().get('model_version')} in {time.monotonic() - started:.0f} s")
        else:
            config.training_checkpoint.unlink(missing_ok=True)
            skipped.append((name, reason))
            print(f"{name}: skipped ({reason})")
    print(f"trained: {', '.join(trained) or 'none'}")
    for name, reason in skipped:
        print(f"not trained: {name} ({reason}); train it with POST /train/{name}")
    return 0 if "ae" in trained or "ae" not in names else 1


if __name__ == "__main__":
    sys.exit(main())
