"""The training loop on real chest films read from a manifest: the time budget is kept to the step, a run stopped
mid-epoch resumes to the weights of an uninterrupted run, a corrupt film fails before training, and the dataset
holds paths rather than pixels."""
import time
import tracemalloc

import pytest
import torch

import medanomaly
from medanomaly import UnsupportedImageError
from medanomaly.data import read_manifest, write_manifest
from medanomaly.training import LazyItem, TrainingSamples, training_items

AE = {"image_size": 64, "channels": [8, 16, 16], "batch_size": 2, "epochs": 2, "num_workers": 1}
# ddpm draws noise and a time step per sample and, in patch mode, random patches per visit: the hardest to resume
DDPM = {"mode": "patch", "patch_size": 96, "image_size": 32, "channels": [8, 16, 16], "norm_num_groups": 8,
        "num_head_channels": 8, "train_patches_per_visit": 2, "batch_size": 4, "epochs": 1, "num_workers": 1,
        "fast": True, "fast_repeats": 1, "ddim_steps": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def manifest(kermany_films, tmp_path_factory):
    """Twelve real normal films in a manifest (paths only)."""
    path = tmp_path_factory.mktemp("manifest") / "train.csv"
    write_manifest([{"image": film, "label": 0} for film in kermany_films["NORMAL"]], path)
    return path


def same_weights(first, second):
    for name, value in first.network.state_dict().items():
        torch.testing.assert_close(second.network.state_dict()[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("name, config", [("ae", AE), ("ddpm", DDPM)])
def test_a_tiny_budget_stops_mid_epoch_within_one_step_and_resumes_to_the_same_weights(name, config, manifest,
                                                                                        tmp_path):
    uninterrupted = medanomaly.create(name, **config)
    uninterrupted.fit(manifest, progress=False)

    reports = []

    def report_slowly(report):
        # Every step lasts at least 0.25 s, so a 0.6 s budget ends within the first epoch (6 steps) however fast
        # the machine: the budget, not the epoch count, must stop this run.
        reports.append(report)
        time.sleep(0.25)

    budget_minutes = 0.01  # 0.6 s: past after the first step or three of twelve (worker start-up included)
    checkpoint = tmp_path / f"{name}.pt"
    stopped = medanomaly.create(name, **config)
    started = time.perf_counter()
    history = stopped.fit(manifest, checkpoint=checkpoint, minutes=budget_minutes, progress=False,
                          on_progress=report_slowly)
    assert reports, "no step was taken"
    # within one step: every step but the last began inside the budget, and the last one ended past it
    assert all(report.budget_left_seconds > 0 for report in reports[:-1])
    assert reports[-1].budget_left_seconds == 0
    assert reports[-1].step < reports[-1].steps_per_epoch and reports[-1].epoch == 1  # mid-epoch
    assert history[-1]["complete"] is False and history[-1]["steps"] == len(reports)
    assert reports[-1].epoch_seconds_estimate > 0 and reports[-1].steps_done == len(reports)
    assert time.perf_counter() - started < 120  # returned, calibrated: not after the whole run
    saved = torch.load(checkpoint, weights_only=True)["train_state"]
    assert (saved["epoch"], saved["step"]) == (0, len(reports))
    assert saved["finished"] is True and stopped.calibration["method"] != "uncalibrated"

    resumed = medanomaly.create(name, **config)
    history = resumed.fit(manifest, checkpoint=checkpoint, progress=False)
    assert [record["epoch"] for record in history] == list(range(1, config["epochs"] + 1))
    assert history[0]["samples"] == uninterrupted.train_state["history"][0]["samples"]
    same_weights(uninterrupted, resumed)


def test_a_corrupt_film_in_the_manifest_stops_training_before_the_first_step(kermany_films, tmp_path):
    films = kermany_films["NORMAL"][:6]
    corrupt = tmp_path / "cut_short.jpeg"
    data = films[3].read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])  # a transfer that stopped half way
    path = write_manifest([{"image": film, "label": 0} for film in films[:3] + [corrupt] + films[3:]],
                          tmp_path / "train.csv")
    reports = []
    started = time.perf_counter()
    with pytest.raises(UnsupportedImageError, match="cut_short.jpeg") as error:
        medanomaly.create("ae", **AE).fit(path, progress=False, on_progress=reports.append)
    assert "truncated JPEG" in str(error.value)
    assert reports == [] and time.perf_counter() - started < 30

    garbage = tmp_path / "not_an_image.png"
    garbage.write_bytes(b"this is a text file that was saved with an image name\n" * 20)
    path = write_manifest([{"image": films[0], "label": 0}, {"image": garbage, "label": 0}], tmp_path / "b.csv")
    with pytest.raises(UnsupportedImageError, match="not_an_image.png"):
        medanomaly.create("ae", **AE).fit(path, progress=False, on_progress=reports.append)
    assert reports == []


def test_the_dataset_holds_paths_and_its_memory_does_not_grow_with_repeats_of_the_manifest(manifest):
    model = medanomaly.create("ae", **AE)
    cases = read_manifest(manifest)

    def footprint(cases):
        tracemalloc.start()
        dataset = TrainingSamples(model, training_items(cases), cache_mb=0, seed=0)
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return dataset, size

    once, once_bytes = footprint(cases)
    ten, ten_bytes = footprint(cases * 10)
    assert len(ten) == 10 * len(once) == 120
    assert all(isinstance(item, LazyItem) for item in ten.items)
    film_bytes = 224 * 224 * 4  # one decoded Kermany film
    assert (ten_bytes - once_bytes) / (9 * len(cases)) < film_bytes / 100  # a path's worth per item, not pixels

    tracemalloc.start()
    for index in range(len(ten)):  # read every film of the repeated manifest once
        assert ten[(0, index)][0][0].shape == (1, 64, 64)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held < 5 * film_bytes  # nothing read is kept (the last couple of reads at most)

    capped = TrainingSamples(model, training_items(cases * 10), cache_mb=1, seed=0)
    assert capped.cached == 2**20 // film_bytes == 5  # the in-memory cache obeys its budget


def test_an_in_memory_copy_of_the_same_films_trains_the_same_weights(manifest):
    """Paths and pixels given directly are one training: the loop does not depend on where the films come from."""
    from_paths = medanomaly.create("ae", **{**AE, "epochs": 1})
    from_paths.fit(manifest, progress=False)
    images = [medanomaly.read_image(case.image) for case in read_manifest(manifest)]
    from_pixels = medanomaly.create("ae", **{**AE, "epochs": 1, "num_workers": 0})
    from_pixels.fit(images, progress=False)
    same_weights(from_paths, from_pixels)

