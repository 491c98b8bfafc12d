"""The chest X-ray VAE paper's parts on real images: the fully connected VAE option of `vae-vlb`, and the modality
CNN that tells a CR film from other modalities (`medanomaly.modality_screen`)."""
import numpy as np
import pytest
import torch
from monai.networks.nets import VarFullyConnectedNet

import medanomaly
from medanomaly.io import read_image
from medanomaly.modality_screen import (DICOM_TRAINING, ModalitySample, ModalitySizes, create_modality_cnn,
                                        modality_samples, probability_cr, volume_slices)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dense_vae_is_fully_connected_on_the_10000_pixels_and_scores_the_vlb(kermany_films, tmp_path):
    films = [read_image(path) for path in kermany_films["NORMAL"][:8]]
    model = medanomaly.create("vae-vlb", architecture="dense", dense_hidden=[64], latent_size=16, batch_size=4,
                              epochs=2, device="cpu")
    assert isinstance(model.network.vae, VarFullyConnectedNet)
    first = next(layer for layer in model.network.modules() if isinstance(layer, torch.nn.Linear))
    assert first.in_features == 100 * 100 and first.out_features == 64
    history = model.fit(films, progress=False)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)

    pneumonia = read_image(kermany_films["PNEUMONIA"][0])
    result = model.predict(pneumonia)
    assert result.map.shape == pneumonia.shape and np.all(result.map >= 0)
    square, _ = model.preprocess(pneumonia.array)
    vlb, terms = model.negative_vlb(torch.as_tensor(square)[None, None], torch.Generator().manual_seed(0))
    assert result.score == pytest.approx(float(vlb[0]), rel=1e-5)
    assert float(vlb[0]) >= float(terms.sum()) - 1e-3  # the KL term is not negative
    again = medanomaly.load(model.save(tmp_path / "dense.pt"))
    assert again.config["architecture"] == "dense"
    assert again.predict(pneumonia).score == pytest.approx(result.score, rel=1e-6)
    assert medanomaly.create("vae-vlb").config["architecture"] == "conv"
    with pytest.raises(ValueError, match="architecture"):
        medanomaly.create("vae-vlb", architecture="recurrent")


def test_modality_cnn_tells_a_held_out_cr_film_from_an_mri_slice(data_root, kermany_films):
    ixi = sorted((data_root / "nifti" / "ixi_nichart").glob("*_T1.nii.gz"))
    films = [ModalitySample(path.name, "Kermany", "CR", read_image(path).array)
             for label in ("NORMAL", "PNEUMONIA") for path in kermany_films[label][:4]]
    slices = [ModalitySample(f"z={k}", "IXI T1", "MR", plane) for k, plane in volume_slices(read_image(ixi[1]).array, 8)]
    model = create_modality_cnn(image_size=48, epochs=4, batch_size=4, seed=0, device="cpu")
    model.fit([sample.item() for sample in films + slices], progress=False)

    held_out_film = ModalitySample("RG1_UNCR.dcm", "DICOM samples", "CR",
                                   read_image(data_root / "dicom" / "pydicom_data" / "RG1_UNCR.dcm").array)
    held_out_slice = ModalitySample("IXI other subject", "IXI T1", "MR", volume_slices(read_image(ixi[0]).array, 3)[1][1])
    film_p, slice_p = probability_cr(model, [held_out_film, held_out_slice])
    assert film_p > 0.5 > slice_p
    assert model.predict(held_out_slice.array).score == pytest.approx(1.0 - slice_p, abs=1e-5)  # score = P(other)


def test_modality_samples_keep_patients_and_volumes_apart(data_root):
    found = modality_samples(data_root, ModalitySizes(films=3, mammograms=2, slices_per_volume=2, brats=False))
    def files(split):
        return {(sample.source, sample.name.split(" ")[0]) for sample in split}
    assert files(found.train).isdisjoint(files(found.test))
    assert {s.source for s in found.train if s.is_cr} >= {"Kermany", "NIH"}
    assert {s.modality for s in found.test} >= {"CR", "MR", "CT", "MG"}
    assert {s.name.split(" ")[0] for s in found.train if s.source == "DICOM samples"} == set(DICOM_TRAINING)
    assert "RG1_UNCR.dcm" in {s.name for s in found.test}
    assert {name for name, _ in found.refused} == {"US1_UNCR.dcm", "liver.dcm"}
    assert all(s.array.ndim == 2 and s.array.max() > s.array.min() for s in found.train + found.test)
