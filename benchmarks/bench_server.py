"""Server overhead and load of the MedAnomaly MONAI Label server (real server, loopback, CPU).

1. Overhead: end-to-end POST /infer latency (MONAILabelClient, datastore image id: read, predict, labelmap and
   heatmap written, multipart answer received) divided by the direct `medanomaly.load(ckpt).predict(path)`
   latency for the same film and model (reading included on both sides). The two alternate, one call each in
   turn, so that the load of a shared machine weighs on both alike; medians of --repeats pairs, for a small film
   (224^2 JPEG) and a full-size CR film (1955 x 1841 DICOM). Goal: <= 1.15.
2. Load: --clients concurrent MONAILabelClients x --requests inferences each; errors, p50 and p95 latency.

    .venv/bin/python benchmarks/bench_server.py [--clients 8] [--requests 25] [--repeats 15] [--model ae]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # monailabel_app.server_process: the launcher the tests use too

import medanomaly  # noqa: E402
import numpy as np  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel_app.server_process import fill_studies, publish_quick_model, running_server  # noqa: E402

SAMPLE = REPO / "sample_data" / "chest"
FILMS = {"small film 224x224 JPEG": "kermany-normal-IM-0115-0001",
         "CR film 1955x1841 DICOM": "pydicom-RG1_J2KI"}


def median_seconds_alternating(runs, repeats: int) -> list[float]:
    """Median wall time of each callable, calling them in turn `repeats` times (after one warm-up call each)."""
    times = [[] for _ in runs]
    for run in runs:
        run()  # warm-up (first load, caches)
    for _ in range(repeats):
        for index, run in enumerate(runs):
            started = time.perf_counter()
            run()
            times[index].append(time.perf_counter() - started)
    return [statistics.median(values) for values in times]


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ae")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-server-"))
    studies = fill_studies(root / "studies", sorted(SAMPLE.iterdir()))
    normals = sorted((Path(args.data) / "kermany_cxr" / "train" / "NORMAL").glob("*.jpeg"))[:8]
    version = publish_quick_model(root / "models", normals, args.model, epochs=1)
    checkpoint = root / "models" / args.model / "model.pt"
    print(f"model {version} (1 epoch on 8 Kermany normals); server on loopback, CPU, 1 torch thread on both sides")

    # the same threading on both sides: the test server runs with OMP_NUM_THREADS=1 (server_process.SERVER_ENV)
    import torch

    torch.set_num_threads(1)
    direct_model = medanomaly.load(checkpoint)
    with running_server(studies, conf={"model_dir": root / "models", "models": args.model}) as url:
        client = MONAILabelClient(url, tmpdir=str(root / "out"))
        (root / "out").mkdir(exist_ok=True)
        print("\n== overhead: end-to-end /infer over direct predict (medians) ==")
        for label, image_id in FILMS.items():
            path = next(studies.glob(f"{image_id}.*"))
            direct, served = median_seconds_alternating(
                [lambda: direct_model.predict(str(path)), lambda: client.infer(args.model, image_id, {})], args.repeats)
            print(f"{label:28s} direct {direct * 1000:8.1f} ms   server {served * 1000:8.1f} ms   "
                  f"overhead x{served / direct:.3f}  (goal <= 1.15)")

        print(f"\n== load: {args.clients} clients x {args.requests} inferences ({FILMS['small film 224x224 JPEG']}) ==")
        latencies, errors = [], []
        lock = threading.Lock()

        def worker(index: int):
            own = MONAILabelClient(url, tmpdir=str(root / "out"))
            for _ in range(args.requests):
                started = time.perf_counter()
                try:
                    own.infer(args.model, FILMS["small film 224x224 JPEG"], {})
                    with lock:
                        latencies.append(time.perf_counter() - started)
                except Exception as error:  # counted and shown: the goal is zero
                    with lock:
                        errors.append(repr(error)[:200])

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        total = args.clients * args.requests
        print(f"requests {total}   errors {len(errors)}   wall {wall:.1f} s   throughput {len(latencies) / wall:.1f}/s")
        if latencies:
            print(f"latency p50 {percentile(latencies, 50) * 1000:.0f} ms   p95 {percentile(latencies, 95) * 1000:.0f} ms"
                  f"   max {max(latencies) * 1000:.0f} ms")
        for error in errors[:5]:
            print("error:", error)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
