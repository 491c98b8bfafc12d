"""Lung-field segmentation on real chest films: two lungs found, plausible size and place, network hook."""
import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from medanomaly.errors import CheckpointError, UnsupportedImageError
from medanomaly.io import read_image
from medanomaly.lung_field import DEFAULT_UNET, LungFieldSegmenter, classical_lung_mask, lung_halves_found
from skimage import measure

FILMS = [("kermany_cxr", "train/NORMAL/IM-0115-0001.jpeg"), ("kermany_cxr", "train/NORMAL/IM-0117-0001.jpeg"),
         ("nih_cxr14", "images_512/00000129_000.png"), ("nih_cxr14", "images_512/00000427_000.png")]


@pytest.mark.parametrize("folder, name", FILMS)
def test_both_lungs_are_found_on_real_films(data_root, folder, name):
    film = read_image(data_root / folder / name).array
    mask = classical_lung_mask(film)
    assert mask.shape == film.shape and mask.dtype == bool
    assert lung_halves_found(mask, min_fraction=0.05) == (True, True)
    middle = film.shape[1] // 2
    for half, offset in ((mask[:, :middle], 0), (mask[:, middle:], middle)):
        largest = max(measure.regionprops(measure.label(half)), key=lambda r: r.area)
        row, col = largest.centroid
        # A lung is tall, sits in the middle rows of the film and does not fill its half.
        assert 0.2 * film.shape[0] < row < 0.8 * film.shape[0]
        assert largest.bbox[2] - largest.bbox[0] > 0.3 * film.shape[0]
        assert largest.area < 0.6 * half.size
    assert 0.05 < mask.mean() < 0.5


def test_a_flat_image_has_no_lungs():
    mask = classical_lung_mask(np.full((200, 180), 3.0, dtype=np.float32))
    assert mask.shape == (200, 180) and not mask.any()


@pytest.mark.parametrize("bad", [np.zeros((10, 10)), np.zeros((3, 64, 64)), np.full((64, 64), np.nan)])
def test_unusable_input_is_refused(bad):
    with pytest.raises(UnsupportedImageError):
        classical_lung_mask(bad)


def test_a_network_checkpoint_loads_from_a_local_path(tmp_path, data_root):
    film = read_image(data_root / "kermany_cxr" / FILMS[0][1]).array
    torch.manual_seed(0)
    network = UNet(**DEFAULT_UNET).eval()
    state_path, script_path = tmp_path / "lungs_state.pt", tmp_path / "lungs_script.pt"
    torch.save(network.state_dict(), state_path)
    torch.jit.script(network).save(str(script_path))
    masks = []
    for path in (state_path, script_path):
        segmenter = LungFieldSegmenter(path)
        assert segmenter.method == "network"
        masks.append(segmenter(film))
        assert masks[-1].shape == film.shape and masks[-1].dtype == bool
    assert np.array_equal(masks[0], masks[1])  # the same weights either way
    assert LungFieldSegmenter().method == "classical"


def test_a_bad_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        LungFieldSegmenter(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointError):
        LungFieldSegmenter(garbage)
