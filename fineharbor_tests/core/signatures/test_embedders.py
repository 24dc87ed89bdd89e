"""Embedders load saved tiny models through the user code path and return unit vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fineharbor.core.signatures import (
    ModelLoadError,
    ModelNotFoundError,
    OpenClipEmbedder,
    SignatureParams,
    SscdEmbedder,
    build_embedders,
    resolve_device,
)
from fineharbor.core.signatures.train_copy_detector import (
    CopyDetector,
    TrainConfig,
    export_torchscript,
    load_images,
    train_copy_detector,
)
from fineharbor_tests.conftest import make_image_bytes
from fineharbor_tests.core.signatures.conftest import SizedCopyNet, save_script


def _images(n: int = 5) -> list[bytes]:
    return [make_image_bytes(seed=k) for k in range(n)]


def _unit(vectors: np.ndarray) -> bool:
    return np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_sscd_embedder_loads_a_torchscript_file(tiny_sscd):
    embedder = SscdEmbedder(tiny_sscd, device="cpu", batch_size=2)
    assert embedder.dim == 24
    assert embedder.input_size == 320  # SSCD's skewing resize when the module does not say
    vectors = embedder.embed_images(_images(5))
    assert vectors.shape == (5, 24) and vectors.dtype == np.float32
    assert _unit(vectors)
    # deterministic, and batch size does not change the result
    again = SscdEmbedder(tiny_sscd, device="cpu", batch_size=5).embed_images(_images(5))
    assert np.allclose(vectors, again, atol=1e-5)


def test_sscd_input_size_comes_from_the_module_attribute(tmp_path):
    path = save_script(SizedCopyNet(96), tmp_path / "sized.torchscript.pt")
    embedder = SscdEmbedder(path, device="cpu")
    assert embedder.input_size == 96
    assert embedder.transform(Image.new("RGB", (300, 200))).shape == (3, 96, 96)
    assert SscdEmbedder(path, device="cpu", input_size=128).input_size == 128


def test_undecodable_images_embed_as_nan_rows(tiny_sscd):
    embedder = SscdEmbedder(tiny_sscd, device="cpu")
    vectors = embedder.embed_images([make_image_bytes(1), b"garbage", make_image_bytes(2)])
    assert np.isnan(vectors[1]).all()
    assert _unit(vectors[[0, 2]])


def test_missing_sscd_file_names_the_path_and_where_to_get_it(tmp_path):
    missing = tmp_path / "sscd_disc_mixup.torchscript.pt"
    with pytest.raises(ModelNotFoundError) as error:
        SscdEmbedder(missing, device="cpu")
    message = str(error.value)
    assert str(missing) in message
    assert "dl.fbaipublicfiles.com/sscd-copy-detection" in message
    assert "train_copy_detector" in message


def test_a_file_that_is_not_torchscript_fails_clearly(tmp_path):
    bogus = tmp_path / "bogus.torchscript.pt"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a loadable TorchScript"):
        SscdEmbedder(bogus, device="cpu")


def test_open_clip_embedder_loads_a_local_checkpoint(tiny_clip):
    name, config, checkpoint = tiny_clip
    embedder = OpenClipEmbedder(
        name, str(checkpoint), model_config=config, device="cpu", batch_size=3
    )
    assert embedder.dim == 32
    images = embedder.embed_images(_images(4))
    assert images.shape == (4, 32) and _unit(images)
    texts = embedder.embed_texts(["a red circle", "two blue squares on the left", "a chart"])
    assert texts.shape == (3, 32) and _unit(texts)
    # the same checkpoint loaded twice embeds identically: weights came from the file
    other = OpenClipEmbedder(name, str(checkpoint), model_config=config, device="cpu")
    assert np.allclose(images, other.embed_images(_images(4)), atol=1e-5)


def test_open_clip_unknown_model_and_missing_checkpoint_fail_clearly(tiny_clip, tmp_path):
    name, config, _ = tiny_clip
    with pytest.raises(ModelNotFoundError, match="no model config named 'ViT-Nope-99'"):
        OpenClipEmbedder("ViT-Nope-99", device="cpu")
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(ModelNotFoundError, match=r"nowhere\.pt"):
        OpenClipEmbedder(name, str(missing), model_config=config, device="cpu")
    with pytest.raises(ModelNotFoundError, match=r"clip_model_config: not found .*missing\.json"):
        OpenClipEmbedder(name, model_config=tmp_path / "missing.json", device="cpu")


def test_build_embedders_from_params(tiny_sscd, tiny_clip):
    name, config, checkpoint = tiny_clip
    params = SignatureParams(
        sscd_path=str(tiny_sscd),
        clip_model=name,
        clip_pretrained=str(checkpoint),
        clip_model_config=str(config),
        device="cpu",
        num_workers=0,
    )
    embedders = build_embedders(params)
    assert [e.name for e in embedders] == ["copy_embedding", "clip_embedding"]
    assert build_embedders(SignatureParams()) == []


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.slow
def test_demo_copy_detector_trains_exports_and_loads(tmp_path):
    config = TrainConfig(
        input_size=32,
        channels=(8, 8, 16, 16),
        embedding_dim=16,
        steps=4,
        batch_images=8,
        hard_negative_every=2,  # exercise neighbour mining too
        hard_negative_k=2,
    )
    bases = load_images(_images(10), base_size=64)
    model = train_copy_detector(bases, config)
    assert isinstance(model, CopyDetector)
    path = export_torchscript(model, tmp_path / "demo_copy.torchscript.pt")
    embedder = SscdEmbedder(path, device="cpu")
    assert embedder.input_size == 32 and embedder.dim == 16
    image = Image.open(__import__("io").BytesIO(make_image_bytes(7))).convert("RGB")
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    vectors = embedder.embed_images([image, mirrored])
    assert _unit(vectors)
    assert float(vectors[0] @ vectors[1]) > 0.999  # flip-symmetric by construction
    # same seed, same data: the same weights
    again = train_copy_detector(bases, config)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
