"""The module's scene logic (MedAnomalyLib.scene) on slicer-core's real vtkMRMLScene, against the real server.

Real films (the sample CR film, a Kermany film) and a BraTS volume go server -> nodes -> corrected segment -> server
label, and their geometry (origin, spacing, direction) must come back unchanged."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import slicer  # slicer-core (imported first by this folder's conftest)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "MedAnomalySlicer"))

from MedAnomalyLib import AnomalyWorkflow, read_volume, threshold_mask  # noqa: E402
from MedAnomalyLib.scene import SEGMENT_ID, AnomalyScene, prepare_bare_scene  # noqa: E402

SAMPLE_CR_FILM = ROOT / "sample_data" / "chest" / "pydicom-RG1_J2KI.dcm"


@pytest.fixture()
def workflow(server):
    flow = AnomalyWorkflow()
    flow.connect(server)
    assert flow.wait(60).error is None
    yield flow
    flow.cleanup()


@pytest.fixture()
def mrml():
    scene = slicer.vtkMRMLScene()
    logics = prepare_bare_scene(scene)  # kept alive with the scene
    yield AnomalyScene(scene), logics
    scene.Clear(1)


@pytest.fixture(scope="module")
def brats_crop(data_root, tmp_path_factory) -> Path:
    """Twelve FLAIR slices through a BraTS tumour, with the case's own geometry made oblique (rotated 20 degrees,
    0.9 x 1.1 x 2.5 mm): an identity grid would hide axis-order and LPS/RAS mistakes."""
    case = sorted((data_root / "brats2015" / "train").iterdir())[0]
    image = sitk.ReadImage(str(case / "Flair_subtrMeanDivStd.nii.gz"))
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "OTMultiClass.nii.gz")))
    middle = int(np.argmax((tumour > 0).sum(axis=(1, 2))))
    crop = image[:, :, middle - 6: middle + 6]
    angle = np.deg2rad(20)
    crop.SetDirection([np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1])
    crop.SetSpacing((0.9, 1.1, 2.5))
    path = tmp_path_factory.mktemp("brats") / "brats-flair-crop.nii.gz"
    sitk.WriteImage(crop, str(path))  # never inside the repository (CC BY-NC-SA)
    return path


def run(workflow, start, timeout=300):
    start()
    state = workflow.wait(timeout)
    assert state.error is None, state.error
    return state.result


def round_trip(workflow, scene: AnomalyScene, path: Path, tmp_path: Path):
    """Load -> compute -> heatmap and segment nodes -> threshold -> edit -> submit -> the server's label."""
    node = scene.load_image(path)
    volume = scene.volume_from_node(node)
    assert volume.same_grid(read_volume(path))
    result = run(workflow, lambda: workflow.compute(volume, "ae", name=path.name))
    assert result.heatmap.same_grid(volume) and result.label.same_grid(volume)

    heatmap_node = scene.show_result(result)
    assert scene.volume_from_node(heatmap_node).same_grid(volume)  # heatmap on the image's grid in the scene
    np.testing.assert_array_equal(scene.edited_mask(), result.label.array)  # the server's cut as the segment

    threshold = float(np.percentile(result.heatmap.array, 90))
    mask = scene.show_threshold(threshold)
    np.testing.assert_array_equal(mask, threshold_mask(result.heatmap.array, threshold))
    np.testing.assert_array_equal(scene.edited_mask(), mask)
    assert heatmap_node.GetDisplayNode().GetWindowLevelMin() == pytest.approx(threshold)  # colours start at the cut
    assert scene.parameter("Threshold") == str(threshold)

    corrected = mask.copy()
    corrected[..., : corrected.shape[-1] // 2] = 0  # the annotator erases the left half of every slice
    scene.show_mask(corrected)
    label = scene.corrected_label()
    assert label.same_grid(volume)
    np.testing.assert_array_equal(label.array, corrected)

    answer = run(workflow, lambda: workflow.submit_correction(scene.edited_mask()))
    assert answer["image"] == result.image_id
    stored_path = workflow.client.download_label(result.image_id, tmp_path)
    stored = read_volume(stored_path)
    assert stored.same_grid(volume), (stored.ijk_to_ras, volume.ijk_to_ras)
    np.testing.assert_array_equal(stored.array.reshape(corrected.shape) > 0, corrected > 0)
    return node, result, sitk.ReadImage(str(stored_path))


def test_sample_cr_film_round_trip(workflow, mrml, tmp_path):
    scene, _ = mrml
    node, result, stored = round_trip(workflow, scene, SAMPLE_CR_FILM, tmp_path)
    original = sitk.ReadImage(str(SAMPLE_CR_FILM))
    assert result.heatmap.shape == (1, original.GetHeight(), original.GetWidth())
    assert stored.GetSpacing()[:2] == pytest.approx(original.GetSpacing()[:2])
    low, high = node.GetDisplayNode().GetWindowLevelMin(), node.GetDisplayNode().GetWindowLevelMax()
    pixels = sitk.GetArrayFromImage(original)
    assert (low, high) == pytest.approx(tuple(np.percentile(pixels, [1, 99])))  # a film's window, not min..max


def test_kermany_film_round_trip_and_colours(workflow, mrml, kermany_films, tmp_path):
    scene, _ = mrml
    round_trip(workflow, scene, kermany_films["PNEUMONIA"][0], tmp_path)
    colours = scene.colour_node
    assert colours.GetNumberOfColors() == 256
    rgba = [0.0] * 4
    colours.GetColor(0, rgba)
    assert rgba[3] == 0.0  # the low end is see-through: normal tissue shows the film
    colours.GetColor(255, rgba)
    assert rgba[3] == 1.0 and rgba[0] == 1.0
    scene.update_heatmap_display("jet", 0.0, 0.5)
    colours.GetColor(0, rgba)
    assert rgba[2] > rgba[0] and rgba[3] == 1.0  # jet starts blue, opaque when nothing is see-through


def test_brats_volume_geometry_survives_the_round_trip(workflow, mrml, brats_crop, tmp_path):
    scene, _ = mrml
    _, result, stored = round_trip(workflow, scene, brats_crop, tmp_path)
    source = sitk.ReadImage(str(brats_crop))
    assert result.heatmap.shape == (12, 240, 240)
    assert stored.GetSize() == source.GetSize()
    assert stored.GetSpacing() == pytest.approx(source.GetSpacing())
    assert stored.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-4)
    assert stored.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-6)


def test_node_references_live_in_the_parameter_node(workflow, mrml, kermany_films, tmp_path):
    scene, _ = mrml
    node = scene.load_image(kermany_films["NORMAL"][5])
    result = run(workflow, lambda: workflow.compute(scene.volume_from_node(node), "ae", name="film"))
    scene.show_result(result)
    again = AnomalyScene(scene.scene)  # a reloaded module finds its nodes through the parameter node
    assert again.parameter_node is scene.parameter_node
    assert again.input_node is node and again.heatmap_node is scene.heatmap_node
    assert again.segmentation_node.GetSegmentation().GetSegment(SEGMENT_ID) is not None
    np.testing.assert_array_equal(again.edited_mask(), result.label.array)  # the same segment, not just one
    assert again.parameter("Model") == "ae" and again.parameter("ImageId") == result.image_id
    count = scene.scene.GetNumberOfNodes()
    scene.show_result(result)  # a second result reuses the module's nodes instead of piling up new ones
    assert scene.scene.GetNumberOfNodes() == count


def test_mask_off_the_heatmap_grid_is_refused(workflow, mrml, kermany_films):
    scene, _ = mrml
    with pytest.raises(Exception, match="compute an anomaly map first"):
        scene.edited_mask()
    node = scene.load_image(kermany_films["NORMAL"][6])
    result = run(workflow, lambda: workflow.compute(scene.volume_from_node(node), "ae", name="film"))
    scene.show_result(result)
    with pytest.raises(Exception, match="not on the heatmap grid"):
        scene.show_mask(np.zeros((1, 10, 10), dtype=np.uint8))
