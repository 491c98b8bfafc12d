"""Distributed training through the real launcher and command line (`torchrun --nproc_per_node 2 ... train`) with two
gloo processes on the CPU, on real chest films, against one process with the same global batch and seed; and a run
killed mid-epoch that resumes when launched again. The model is a small autoencoder normalised per film (see
distributed_train.py for why not BatchNorm)."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medanomaly.data import write_manifest

SCRIPT = Path(__file__).with_name("distributed_train.py")
# batch_size is per process: 2 processes x 2 films = the single process's 4
CONFIG = ["image_size=64", "channels=[8,16,16]", "num_workers=0", "seed=3"]
EPOCHS = 3
# Tolerance: DDP averages the two processes' gradients, one process averages over the whole batch: the same sum in
# another order, so float32 rounding differs (~1e-7 relative) and Adam carries it through the nine steps.
WEIGHT_ATOL, LOSS_RTOL = 1e-5, 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(processes: int, manifest, out, batch: int, extra=()) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return [*launcher, str(SCRIPT), "train", "--model", "ae-groupnorm", "--manifest", str(manifest),
            "--out", str(out), "--epochs", str(EPOCHS), "--config", *CONFIG, f"batch_size={batch}", *extra]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(command):
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", env=environment(),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def manifest(kermany_films, tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "train.csv"
    write_manifest([{"image": film, "label": 0} for film in kermany_films["NORMAL"]], path)  # 12 films: 3 steps
    return path


@pytest.fixture(scope="module")
def runs(manifest, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    run(train_command(1, manifest, folder / "one.pt", batch=4))
    run(train_command(2, manifest, folder / "two.pt", batch=2))
    return {name: torch.load(folder / f"{name}.pt", weights_only=True) for name in ("one", "two")}


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(runs):
    one, two = runs["one"], runs["two"]
    curve_one = [record["loss"] for record in one["train_state"]["history"]]
    curve_two = [record["loss"] for record in two["train_state"]["history"]]
    assert len(curve_one) == len(curve_two) == EPOCHS and curve_one[-1] < curve_one[0]
    assert curve_two == pytest.approx(curve_one, rel=LOSS_RTOL)
    assert [r["steps"] for r in two["train_state"]["history"]] == [3] * EPOCHS  # 12 films / global batch 4
    for name, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], value, atol=WEIGHT_ATOL, rtol=0, msg=name)
    # calibrated once, by rank 0, on the same films: the same thresholds within the same tolerance
    assert two["thresholds"]["image"] == pytest.approx(one["thresholds"]["image"], rel=1e-4)
    assert not any(key.startswith("module.") for key in two["state_dict"])  # the bare network, not the wrapper


def test_a_run_killed_mid_epoch_resumes_when_launched_again(manifest, runs, tmp_path):
    out = tmp_path / "killed.pt"
    command = train_command(2, manifest, out, batch=2, extra=["checkpoint_minutes=0"])  # a checkpoint every step
    launched = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(),
                                start_new_session=True)
    state, deadline = None, time.monotonic() + 300
    while time.monotonic() < deadline and launched.poll() is None:
        if out.exists():
            try:
                state = torch.load(out, weights_only=True)["train_state"]
            except Exception:  # noqa: BLE001 - a reader racing the rename may see nothing yet
                state = None
            if state and state.get("step", 0) >= 1 and not state["finished"]:
                break
        time.sleep(0.05)
    os.killpg(launched.pid, signal.SIGKILL)
    launched.wait()
    assert state is not None and state["step"] >= 1, "no mid-epoch checkpoint appeared before the run ended"

    port = command.index("--master_port") + 1
    run(command[:port] + [str(free_port())] + command[port + 1:])  # the same command, launched again
    resumed = torch.load(out, weights_only=True)
    assert resumed["train_state"]["finished"] and resumed["train_state"]["epoch"] == EPOCHS
    for name, value in runs["two"]["state_dict"].items():  # the uninterrupted two-process run
        torch.testing.assert_close(resumed["state_dict"][name], value, atol=1e-6, rtol=0, msg=name)
