"""Batch scoring of a real folder of chest films: the CSV, its errors column, resume after a kill, and two
processes under torchrun giving the same CSV as one."""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import medanomaly
from medanomaly.io import read_image
from medanomaly.scoring import COLUMNS, FolderSource, ManifestSource, score_archive

REPO = Path(__file__).resolve().parents[2]


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@contextlib.contextmanager
def one_thread():
    """The subprocesses run with OMP_NUM_THREADS=1; in-process runs use one thread too, so that every run
    computes each score in the same order of operations."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_cli(args: list[str], launcher: list[str] | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable] + (launcher or []) + ["-m", "medanomaly", "score"] + args
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            encoding="utf-8", errors="replace", **popen)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, kermany_films) -> Path:
    """An autoencoder fitted for one epoch on eight real normal films."""
    path = tmp_path_factory.mktemp("model") / "ae.pt"
    model = medanomaly.create("ae", epochs=1, batch_size=4)
    model.fit([str(film) for film in kermany_films["NORMAL"][:8]], checkpoint=path, progress=False)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data_root) -> Path:
    """24 real films none of which trained the model, one truncated JPEG in a subfolder, and a note."""
    folder = tmp_path_factory.mktemp("archive")
    train = data_root / "kermany_cxr" / "train"
    films = sorted((train / "NORMAL").glob("*.jpeg"))[40:56] + sorted((train / "PNEUMONIA").glob("*.jpeg"))[40:48]
    for film in films:
        shutil.copy2(film, folder / film.name)
    (folder / "ward-b").mkdir()
    data = films[0].read_bytes()
    (folder / "ward-b" / "cut-short.jpeg").write_bytes(data[: len(data) // 3])
    (folder / "notes.txt").write_text("not an image, not listed", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint, archive, tmp_path_factory) -> Path:
    """One process, in this process, with two DataLoader workers reading."""
    out = tmp_path_factory.mktemp("one-process")
    with one_thread():
        summary = score_archive(checkpoint, FolderSource(archive), out, workers=2, maps=True)
    assert summary["images"] == 25 and summary["scored"] == 25 and summary["errors"] == 1
    return out / "scores.csv"


def test_one_row_per_image_and_the_corrupt_film_in_the_errors_column(reference, checkpoint, archive):
    rows = rows_of(reference)
    assert list(rows[0]) == COLUMNS
    assert [row["id"] for row in rows] == [entry.id for entry in FolderSource(archive).list()]
    assert "notes.txt" not in {row["id"] for row in rows}
    broken = next(row for row in rows if row["id"] == "ward-b/cut-short.jpeg")
    assert broken["score"] == "" and "truncated" in broken["error"]

    model = medanomaly.load(checkpoint)
    scored = [row for row in rows if row is not broken]
    assert all(row["error"] == "" and row["model_version"] == model.model_version for row in scored)
    with one_thread():
        for row in scored[:: 6]:  # the CSV holds what the model says for the film
            result = model.predict(read_image(archive / row["id"]))
            assert float(row["score"]) == pytest.approx(result.score, rel=1e-6)
            assert row["is_anomalous"] == str(result.meta["is_anomalous"]).lower()
            anomaly_map = read_image(reference.parent / row["map"])
            assert anomaly_map.shape == result.map.shape


def test_two_processes_under_torchrun_write_the_same_csv(reference, checkpoint, archive, tmp_path):
    from monailabel_server import free_port

    out = tmp_path / "two-processes"
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    process = run_cli(["--checkpoint", str(checkpoint), "--folder", str(archive), "--out", str(out), "--maps",
                       "--progress-every", "5"], launcher=launcher)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert "[rank 1/2]" in stderr  # both ranks worked and reported progress
    assert '"processes": 2' in stdout.strip().splitlines()[-1]
    assert (out / "scores.csv").read_text(encoding="utf-8") == reference.read_text(encoding="utf-8")
    assert not (out / ".parts").exists()


def test_a_killed_run_resumes_where_it_stopped(reference, checkpoint, archive, tmp_path):
    out = tmp_path / "killed"
    part = out / ".parts" / "rank-0.csv"
    process = run_cli(["--checkpoint", str(checkpoint), "--folder", str(archive), "--out", str(out),
                       "--workers", "0"], start_new_session=True)
    deadline = time.monotonic() + 300
    while not (part.exists() and part.read_text(encoding="utf-8").count("\n") >= 3):  # the header and two rows
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no row was written within 5 minutes"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    process.stderr.close()
    finished = len(rows_of(part))
    assert 2 <= finished < 25
    with open(part, "a", encoding="utf-8") as handle:
        handle.write("IM-0001-0001.jpeg,0.31")  # a row torn by the kill: no newline

    with one_thread():
        summary = score_archive(checkpoint, FolderSource(archive), out, workers=0, maps=True)
    assert summary["skipped"] == finished and summary["scored"] == 25 - finished
    scores, expected = rows_of(out / "scores.csv"), rows_of(reference)
    assert [row["id"] for row in scores] == [row["id"] for row in expected]
    assert [(row["score"], row["error"]) for row in scores] == [(row["score"], row["error"]) for row in expected]

    with one_thread():
        again = score_archive(checkpoint, FolderSource(archive), out, workers=0)
    assert again["scored"] == 0 and again["skipped"] == 25  # the errored row counts as done...
    with one_thread():
        retried = score_archive(checkpoint, FolderSource(archive), out, workers=0, retry_errors=True)
    assert retried["scored"] == 1 and retried["errors"] == 1  # ...unless errors are retried


def test_manifest_paths_are_relative_to_the_csv_and_a_missing_file_is_an_error_row(checkpoint, archive, tmp_path):
    films = sorted(archive.glob("*.jpeg"))[:3]
    manifest = tmp_path / "lists" / "tonight.csv"
    manifest.parent.mkdir()
    lines = ["image,label"] + [f"{os.path.relpath(film, manifest.parent)},0" for film in films]
    lines.append("../gone/missing.jpeg,1")
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with one_thread():
        summary = score_archive(checkpoint, ManifestSource(manifest), tmp_path / "out", workers=1)
    rows = rows_of(tmp_path / "out" / "scores.csv")
    assert summary["scored"] == 4 and summary["errors"] == 1
    assert [row["id"] for row in rows] == [line.split(",")[0] for line in lines[1:]]
    assert all(row["score"] for row in rows[:3])
    assert rows[3]["score"] == "" and "no such image file" in rows[3]["error"]


def test_a_bad_source_is_refused_with_its_reason(checkpoint, tmp_path, capsys):
    from medanomaly.cli import main

    code = main(["score", "--checkpoint", str(checkpoint), "--folder", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "out")])
    assert code == 2 and "nowhere does not exist" in capsys.readouterr().err
