"""Command line: python -m medanomaly {list,manifests,train,evaluate,predict,score,zoo}.

The last line `evaluate` prints is one JSON object, so scripts and benchmarks can parse it."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_config(pairs: list[str]) -> dict:
    """key=value pairs; values are JSON when they parse as JSON (numbers, lists, booleans), else strings."""
    config = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--config expects key=value, got {pair!r}")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def _cmd_list(args) -> int:
    from . import describe_models

    for name, info in describe_models().items():
        print(f"{name:18s} {info['kind']:14s} {info['description']}")
    return 0


def _cmd_manifests(args) -> int:
    from .data.builders import BUILDERS

    written = BUILDERS[args.dataset](Path(args.data), Path(args.out), **parse_config(args.config))
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


def _cmd_train(args) -> int:
    from . import create, load
    from .training import distributed_session, rank
    from .config_validation import validate_training_settings

    config = validate_training_settings(args.model, parse_config(args.config))
    if args.epochs is not None:
        config["epochs"] = args.epochs
    elif args.minutes is not None:
        config.setdefault("epochs", 10_000)  # the time budget decides
    out = Path(args.out)
    with distributed_session():  # under torchrun: DDP, one process per GPU (NCCL) or CPU share (gloo)
        model = create(args.model, **config)
        history = model.fit(args.manifest, val=args.val, checkpoint=out, minutes=args.minutes)
        if rank() != 0:
            return 0  # rank 0 calibrated and wrote the checkpoint
    model = load(out)
    print(json.dumps({"checkpoint": str(out), "model_version": model.model_version, "epochs": len(history),
                      "train_seconds": sum(h["seconds"] for h in history), "thresholds": model.thresholds,
                      "calibration": model.calibration["method"]}))
    return 0


def _cmd_evaluate(args) -> int:
    from . import load
    from .evaluation import evaluate

    model = load(args.checkpoint, **({"device": args.device} if args.device else {}))
    summary = evaluate(model, args.manifest, args.out, n_overlays=args.overlays)
    print(json.dumps(summary))
    return 0


def _cmd_predict(args) -> int:
    from . import load, read_image
    from .io import write_image

    model = load(args.checkpoint, **({"device": args.device} if args.device else {}))
    result = model.predict(read_image(args.image), threshold=args.threshold)
    write_image(result.image, args.out, array=result.map)
    if args.mask_out:
        write_image(result.image, args.mask_out, array=result.mask)
    print(json.dumps(result.summary(), default=str))
    return 0


def _cmd_score(args) -> int:
    from .scoring import open_source, score_archive

    source = open_source(args.manifest, args.folder, args.dicomweb, args.modality.split(","))
    summary = score_archive(args.checkpoint, source, args.out, maps=args.maps, workers=args.workers,
                            device=args.device, progress_every=args.progress_every, retry_errors=args.retry_errors)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def _cmd_zoo(args) -> int:
    from . import list_models, zoo

    out = Path(args.out) if args.out else zoo.DEFAULT_ZOO
    if args.action == "build":
        for name in args.names or list(zoo.RECIPES):
            if name not in list_models():
                raise SystemExit(f"unknown model {name!r}")
            zoo.build(name, Path(args.data), out, Path(args.work) if args.work else zoo.DEFAULT_WORK)
    print("cards saying why not shipped:", ", ".join(zoo.write_missing_cards(out)) or "none")
    return 0


def _cmd_reproduce(args) -> int:
    from .reproduce import reproduce

    out = Path(args.out) if args.out else Path("reports") / args.paper
    print(reproduce(args.paper, Path(args.data), out, args.budget, Path(args.work) if args.work else None,
                    args.device, args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medanomaly", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="registered models").set_defaults(run=_cmd_list)

    manifests = sub.add_parser("manifests", help="write CSV manifests for a dataset")
    manifests.add_argument("dataset", help="kermany, mini_mias, nih, brats or dicom_samples")
    manifests.add_argument("--data", required=True, help="the dataset's folder")
    manifests.add_argument("--out", required=True)
    manifests.add_argument("--config", nargs="*", default=[], help="builder options as key=value")
    manifests.set_defaults(run=_cmd_manifests)

    train = sub.add_parser("train", help="train a model on a manifest and calibrate it")
    train.add_argument("--model", required=True)
    train.add_argument("--manifest", required=True)
    train.add_argument("--val")
    train.add_argument("--out", required=True, help="checkpoint path; an unfinished one there is resumed")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--minutes", type=float)
    train.add_argument("--config", nargs="*", default=[], help="model config as key=value")
    train.set_defaults(run=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="metrics, ROC and overlay PNGs on a manifest")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--manifest", required=True)
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--overlays", type=int, default=6)
    evaluate.add_argument("--device")
    evaluate.set_defaults(run=_cmd_evaluate)

    predict = sub.add_parser("predict", help="anomaly map of one film or volume")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("image")
    predict.add_argument("--out", required=True, help="map file (.nrrd or .nii.gz), on the input's grid")
    predict.add_argument("--mask-out")
    predict.add_argument("--threshold", type=float)
    predict.add_argument("--device")
    predict.set_defaults(run=_cmd_predict)

    score = sub.add_parser("score", help="score an archive into one CSV row per image (resumes; runs under torchrun)")
    score.add_argument("--checkpoint", required=True)
    where = score.add_mutually_exclusive_group(required=True)
    where.add_argument("--manifest", help="CSV with an `image` column")
    where.add_argument("--folder", help="every image file below this folder")
    where.add_argument("--dicomweb", help="DICOMweb URL, e.g. http://pacs:8042/dicom-web")
    score.add_argument("--modality", default="CR,DX,MG,MR", help="DICOMweb: modalities to list (comma-separated)")
    score.add_argument("--out", required=True, help="folder for scores.csv (and maps/)")
    score.add_argument("--maps", action="store_true", help="also write each anomaly map as NRRD")
    score.add_argument("--workers", type=int, default=2, help="DataLoader workers reading images")
    score.add_argument("--device")
    score.add_argument("--progress-every", type=int, default=50, help="a progress line every N images off a terminal")
    score.add_argument("--retry-errors", action="store_true", help="score again the images whose row has an error")
    score.set_defaults(run=_cmd_score)

    zoo = sub.add_parser("zoo", help="build the shipped checkpoints and their model cards (resumes)")
    zoo.add_argument("action", choices=["build", "cards"])
    zoo.add_argument("names", nargs="*", help="models to build (default: every recipe, in order)")
    zoo.add_argument("--data", default="../shared/data")
    zoo.add_argument("--out", default=None, help="zoo folder (default: monailabel_app/zoo)")
    zoo.add_argument("--work", default=None, help="training checkpoints and manifests (default: build/zoo)")
    zoo.set_defaults(run=_cmd_zoo)

    from .reproduce import BUDGETS, PAPERS

    paper = sub.add_parser("reproduce", help="one paper's protocol: its tables and figures beside ours, and deviations")
    paper.add_argument("paper", choices=list(PAPERS))
    paper.add_argument("--data", default="../shared/data")
    paper.add_argument("--out", help="report folder (default: reports/PAPER)")
    paper.add_argument("--budget", choices=BUDGETS, default="quick",
                       help="smoke: seconds; quick: at most 20 min on a 2-core CPU; full: the paper's protocol")
    paper.add_argument("--work", help="cached trainings (default: build/reproduce/PAPER/BUDGET)")
    paper.add_argument("--device")
    paper.add_argument("--seed", type=int, default=0)
    paper.set_defaults(run=_cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import MedAnomalyError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MedAnomalyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
