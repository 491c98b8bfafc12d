"""Benchmark batch scoring: films per second with one process and with several under torchrun, as a ratio.

Trains an autoencoder for one epoch on a few Kermany normal films (or takes --checkpoint), then scores --films real
chest films (normal and pneumonia, listed in a manifest) with `python -m medanomaly score`, once with 1 process and
once with `torchrun --nproc_per_node N`, and checks that both wrote the same CSV. Films per second count the
scoring loop (reading in DataLoader workers, predicting, writing rows), not the start-up; the wall time of each
command, start-up included, is printed beside it. With CUDA the processes share out the GPUs (rank r on GPU
r mod count), so the same command measures one and several processes on GPUs. The last line is one JSON object.

    .venv/bin/python benchmarks/bench_scoring.py --data ../shared/data --films 1000 --processes 2
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import medanomaly

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def score(processes: int, checkpoint: Path, manifest: Path, out: Path, workers: int, threads: int) -> dict:
    """One scoring command; returns its JSON summary plus the command's wall time."""
    launcher = (["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                 "--master_port", str(free_port())] if processes > 1 else [])
    command = [sys.executable, *launcher, "-m", "medanomaly", "score", "--checkpoint", str(checkpoint),
               "--manifest", str(manifest), "--out", str(out), "--workers", str(workers), "--progress-every", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace")
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"scoring with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--films", type=int, default=1000, help="films to score (half normal, half pneumonia)")
    parser.add_argument("--processes", type=int, default=2, help="processes of the torchrun run")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader reading workers per process")
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: an autoencoder fitted here)")
    args = parser.parse_args()

    films_dir = Path(args.data) / "kermany_cxr" / "train"
    normals, pneumonia = sorted((films_dir / "NORMAL").glob("*.jpeg")), sorted((films_dir / "PNEUMONIA").glob("*.jpeg"))
    films = normals[100:100 + args.films // 2] + pneumonia[:args.films - args.films // 2]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as work:
        work = Path(work)
        checkpoint = Path(args.checkpoint) if args.checkpoint else work / "ae.pt"
        if not args.checkpoint:
            medanomaly.create("ae", epochs=1, batch_size=8).fit([str(f) for f in normals[:16]], checkpoint=checkpoint,
                                                                progress=False)
        manifest = work / "films.csv"
        manifest.write_text("image\n" + "".join(f"{film}\n" for film in films), encoding="utf-8")

        # Every run uses all cores: one process with all its threads, N processes with an equal share each.
        one = score(1, checkpoint, manifest, work / "one", args.workers, cores)
        many = score(args.processes, checkpoint, manifest, work / "many", args.workers,
                     max(1, cores // args.processes))
        same_csv = (work / "one" / "scores.csv").read_bytes() == (work / "many" / "scores.csv").read_bytes()

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {cores} cores"
    ratio = many["images_per_second"] / one["images_per_second"]
    print(f"device: {device}; {len(films)} Kermany films (224x224 JPEG), model ae, {args.workers} reading worker(s)")
    print(f"1 process:  {one['images_per_second']:.2f} films/s ({one['wall_seconds']:.1f} s wall with start-up)")
    print(f"{args.processes} processes: {many['images_per_second']:.2f} films/s "
          f"({many['wall_seconds']:.1f} s wall with start-up)")
    print(f"ratio {args.processes} / 1 processes: {ratio:.2f}; same CSV: {same_csv}")
    print(json.dumps({"device": device, "films": len(films), "processes": args.processes,
                      "films_per_second_1": one["images_per_second"],
                      f"films_per_second_{args.processes}": many["images_per_second"], "ratio": ratio,
                      "wall_seconds_1": one["wall_seconds"], f"wall_seconds_{args.processes}": many["wall_seconds"],
                      "same_csv": same_csv}))


if __name__ == "__main__":
    main()
