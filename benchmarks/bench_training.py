"""Training that keeps its word: peak memory on the 5216 Kermany training films and on that manifest repeated ten
times, overshoot of a time budget, steps per second of the in-memory loop (before) against the streaming loop, and
the DDP step time against one process.

Each memory figure comes from a fresh process that trains a few optimiser steps and stops (the loop's own stop
path: mid-epoch checkpoint, calibration on 20 films). Peak RSS is that process's (`ru_maxrss`) and, apart, that of
its largest DataLoader worker. The in-memory loop's dataset size on the same manifests is computed (samples x
bytes per sample), not run: at 5216 films x 10 it would not fit in this machine's memory.

    .venv/bin/python benchmarks/bench_training.py --data ../shared/data             # everything, ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_training.py --only overshoot --budget-minutes 3
    .venv/bin/python benchmarks/bench_training.py --only ddp --ddp-processes 2      # DDP step time vs one process

The last line printed is one JSON object with every figure."""
from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Small enough that a few steps take seconds on 2 CPU cores; the memory question does not depend on the size.
MODELS = {
    "gcm": {"classes": ["normal", "pneumonia"], "image_size": 128, "batch_size": 8},
    "ae": {"batch_size": 16},
    "ddpm": {"image_size": 64, "batch_size": 8, "fast": True, "fast_repeats": 1, "ddim_steps": 5},
}


def write_manifests(data: Path, out: Path) -> dict:
    """The 5216 Kermany training films (both classes) and the same rows repeated ten times."""
    from medanomaly.data import write_manifest

    root = data.resolve() / "kermany_cxr"
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = [{"image": root / r["path"], "label": int(r["label"])} for r in csv.DictReader(handle)
                if r["split"] == "train"]
    out.mkdir(parents=True, exist_ok=True)
    val = [r for r in rows if r["label"] == 0][:10] + [r for r in rows if r["label"] == 1][:10]
    return {"films": write_manifest(rows, out / "train.csv"), "films_x10": write_manifest(rows * 10, out / "x10.csv"),
            "val": write_manifest(val, out / "val.csv"), "rows": len(rows)}


def peak_memory_child(model: str, manifest: str, val: str, steps: int, out: str) -> None:
    """Run in a fresh process: train `steps` steps, stop, print peak RSS figures as JSON."""
    import torch

    import medanomaly

    torch.set_num_threads(1)
    taken = []
    trained = medanomaly.create(model, epochs=1, **MODELS[model])
    started = time.perf_counter()
    trained.fit(manifest, val=val, checkpoint=Path(out) / f"{model}.pt", progress=False,
                on_progress=taken.append, should_stop=lambda: len(taken) >= steps)
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(self_mb), "largest_worker_rss_mb": round(worker_mb),
                      "steps": len(taken), "seconds": round(time.perf_counter() - started, 1),
                      "seconds_per_step": round(taken[-1].seconds_per_step, 2),
                      "epoch_minutes_estimate": round(taken[-1].epoch_seconds_estimate / 60, 1)}))


def in_memory_dataset_mb(model_name: str, manifest: Path) -> float:
    """What the former loop held: every training sample of the manifest preprocessed into one TensorDataset."""
    import medanomaly
    from medanomaly.data import read_manifest
    from medanomaly.training import training_items

    model = medanomaly.create(model_name, **MODELS[model_name])
    items = model.select_training_items(training_items(read_manifest(manifest, check_files=False)))
    sample = model.training_samples(items[0])
    return len(items) * len(sample) * sum(np.asarray(a).nbytes for a in sample[0]) / 2**20


def measure_memory(manifests: dict, out: Path, steps: int) -> dict:
    figures = {}
    for model in MODELS:
        for name in ("films", "films_x10"):
            command = [sys.executable, __file__, "--child", model, str(manifests[name]), str(manifests["val"]),
                       str(steps), str(out)]
            result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", check=True)
            figure = json.loads(result.stdout.strip().splitlines()[-1])
            figure["in_memory_loop_dataset_mb"] = round(in_memory_dataset_mb(model, manifests[name]))
            figures[f"{model}/{name}"] = figure
            print(f"{model:5s} {name:10s} peak RSS {figure['peak_rss_mb']} MB (largest worker "
                  f"{figure['largest_worker_rss_mb']} MB) after {figure['steps']} steps; the in-memory loop's "
                  f"dataset alone: {figure['in_memory_loop_dataset_mb']} MB; {figure['seconds_per_step']} s/step, "
                  f"epoch ~{figure['epoch_minutes_estimate']} min", flush=True)
    return figures


def measure_overshoot(manifests: dict, out: Path, budget_minutes: float) -> dict:
    """Ask for `budget_minutes` of ae training on the 5216 films; when does fit return, and what is after the
    last step (checkpoint write and calibration on 20 films)."""
    import medanomaly

    taken = []
    model = medanomaly.create("ae", epochs=100, **MODELS["ae"])
    started = time.perf_counter()
    model.fit(manifests["films"], val=manifests["val"], checkpoint=out / "overshoot.pt", minutes=budget_minutes,
              progress=False, on_progress=lambda report: taken.append((time.perf_counter(), report)))
    returned = time.perf_counter() - started
    last_step_end, last = taken[-1]
    budget = budget_minutes * 60
    figure = {"budget_seconds": budget, "returned_after_seconds": round(returned, 1),
              "last_step_ended_seconds": round(last_step_end - started, 1),
              "training_overshoot_seconds": round(last_step_end - started - budget, 2),
              "seconds_per_step": round(last.seconds_per_step, 2), "steps": len(taken),
              "checkpoint_and_calibration_seconds": round(started + returned - last_step_end, 1)}
    print(f"budget {budget:.0f} s: training stopped at {figure['last_step_ended_seconds']} s (overshoot "
          f"{figure['training_overshoot_seconds']} s, one step is {figure['seconds_per_step']} s); fit returned "
          f"at {figure['returned_after_seconds']} s after the checkpoint and calibration on 20 films", flush=True)
    return figure


def measure_speed(manifests: dict, films: int) -> dict:
    """Steps/s of ae on the same `films` normal films: the former loop (preprocess everything into a TensorDataset,
    then train) against the streaming loop (workers read and preprocess while the main process steps)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import medanomaly
    from medanomaly.data import read_manifest, write_manifest
    from medanomaly.training import LazyItem

    cases = [case for case in read_manifest(manifests["films"]) if not case.is_abnormal][:films]
    subset = write_manifest(cases, Path(manifests["films"]).with_name("speed.csv"))
    config = {**MODELS["ae"], "epochs": 1}

    model = medanomaly.create("ae", **config)
    started = time.perf_counter()
    samples = [s for case in cases for s in model.training_samples(LazyItem(case).load())]
    dataset = TensorDataset(torch.as_tensor(np.stack([s[0] for s in samples])))
    prepared = time.perf_counter()
    optimizer = model.make_optimizer()
    count = 0
    for (x,) in DataLoader(dataset, batch_size=config["batch_size"], shuffle=True):
        loss = model.training_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        count += 1
    before_total = count / (time.perf_counter() - started)
    before_steps_only = count / (time.perf_counter() - prepared)

    streamed = medanomaly.create("ae", **config)
    taken = []
    started = time.perf_counter()
    streamed.fit(subset, val=manifests["val"], progress=False, on_progress=taken.append)
    after = len(taken) / taken[-1].elapsed_seconds
    figure = {"films": films, "steps": count, "before_steps_per_s": round(before_total, 3),
              "before_steps_per_s_excluding_preprocessing": round(before_steps_only, 3),
              "after_steps_per_s": round(after, 3), "ratio_after_over_before": round(after / before_total, 2)}
    print(f"steps/s on {films} films: before {before_total:.3f} (preprocessing included; {before_steps_only:.3f} "
          f"counting the steps alone), after {after:.3f}: ratio {figure['ratio_after_over_before']}", flush=True)
    return figure


def measure_ddp(manifests: dict, out: Path, films: int, processes: int) -> dict:
    """Seconds per optimiser step of `torchrun --nproc_per_node N -m medanomaly train` (gloo on CPUs, NCCL on GPUs)
    against one process with the same global batch, one epoch of ae on `films` normal films."""
    import torch

    from medanomaly.data import read_manifest, write_manifest

    cases = [case for case in read_manifest(manifests["films"]) if not case.is_abnormal][:films]
    subset = write_manifest(cases, Path(manifests["films"]).with_name("ddp.csv"))
    batch = MODELS["ae"]["batch_size"]
    figure = {"films": films, "global_batch": batch, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    for count in (1, processes):
        checkpoint = out / f"ddp_{count}.pt"
        checkpoint.unlink(missing_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(count),
                   "--master_addr", "127.0.0.1", "--master_port", str(29600 + count), "-m", "medanomaly", "train",
                   "--model", "ae", "--manifest", str(subset), "--val", str(manifests["val"]), "--out",
                   str(checkpoint), "--epochs", "1", "--config", f"batch_size={batch // count}", "num_workers=1"]
        env = {**__import__("os").environ, "OMP_NUM_THREADS": str(max(1, 2 // count))}
        subprocess.run(command, check=True, capture_output=True, env=env)
        record = torch.load(checkpoint, weights_only=True)["train_state"]["history"][0]
        figure[f"seconds_per_step_{count}_process"] = round(record["seconds"] / record["steps"], 3)
    figure["ratio_ddp_over_single"] = round(figure[f"seconds_per_step_{processes}_process"]
                                            / figure["seconds_per_step_1_process"], 2)
    print(f"DDP on {figure['device']}: {figure['seconds_per_step_1_process']} s/step with 1 process, "
          f"{figure[f'seconds_per_step_{processes}_process']} s/step with {processes} (global batch {batch}): "
          f"ratio {figure['ratio_ddp_over_single']}", flush=True)
    return figure


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, manifest, val, steps, out = sys.argv[2:7]
        peak_memory_child(model, manifest, val, int(steps), out)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="results/bench_training")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per memory measurement")
    parser.add_argument("--budget-minutes", type=float, default=3.0)
    parser.add_argument("--speed-films", type=int, default=256)
    parser.add_argument("--ddp-films", type=int, default=128)
    parser.add_argument("--ddp-processes", type=int, default=2)
    parser.add_argument("--only", choices=["memory", "overshoot", "speed", "ddp"], action="append")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    manifests = write_manifests(Path(args.data), out / "manifests")
    print(f"kermany: {manifests['rows']} training films; repeated manifest: {10 * manifests['rows']} rows")
    parts = args.only or ["memory", "overshoot", "speed", "ddp"]
    figures = {}
    if "memory" in parts:
        figures["memory"] = measure_memory(manifests, out, args.steps)
    if "overshoot" in parts:
        figures["overshoot"] = measure_overshoot(manifests, out, args.budget_minutes)
    if "speed" in parts:
        figures["speed"] = measure_speed(manifests, args.speed_films)
    if "ddp" in parts:
        figures["ddp"] = measure_ddp(manifests, out, args.ddp_films, args.ddp_processes)
    print(json.dumps({key: value for key, value in figures.items()}, default=str))


if __name__ == "__main__":
    main()
