"""Teacher sources: the project's embedding of rendered views equals each library's own forward.

Tiny random-initialised timm (ViT + convnet), transformers (DINOv2, CLIP vision), open_clip and
user-factory teachers, saved to local files and loaded through ``--teacher-weights`` (nothing is
downloaded: ``HF_HUB_OFFLINE=1``). Also: the uint8 round trip, the registry's errors, the ViT size
check and the pooling override.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from teacher_zoo import SIZE, Zoo, build_zoo

from store.datasets import open_dataset
from store.errors import CheckpointError, ConfigError
from store.views import RECIPES, get_recipe, plan_views, render_view
from teacher_service.sources import MissingExtraError, load_teacher, require, to_pixels


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    """6 MoCo-v2 views of 3 synthetic images, rendered (uint8 pixels of the normalised render)."""
    ds = open_dataset("synthetic:3")
    recipe = get_recipe("mocov2", SIZE)
    images = [ds.load(i) for i in range(3)]
    heights = np.array([im.shape[0] for im in images])
    widths = np.array([im.shape[1] for im in images])
    params = plan_views(recipe, 0, heights, widths, 2)
    views = [render_view(images[i], params[i, v], recipe) for i in range(3) for v in range(2)]
    return to_pixels(torch.stack(views), recipe.mean, recipe.std)


def test_pixels_round_trip_exactly() -> None:
    """Every grey level survives render-normalise -> to_pixels for every recipe's mean/std."""
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    for name in RECIPES:
        r = get_recipe(name, 16)
        m = torch.tensor(r.mean).view(1, 3, 1, 1)
        s = torch.tensor(r.std).view(1, 3, 1, 1)
        x = u.to(torch.float32).div(255.0).sub(m).div(s)
        assert torch.equal(to_pixels(x, r.mean, r.std), u)


@pytest.mark.parametrize(
    "name", ["timm_vit", "timm_cnn", "hf_dinov2", "hf_clip", "open_clip", "py"]
)
def test_embedding_equals_the_library_forward(zoo: Zoo, pixels: torch.Tensor, name: str) -> None:
    spec, weights, reference = zoo[name]
    loaded = load_teacher(spec, weights)
    got = loaded.model(pixels)
    assert isinstance(got, torch.Tensor)
    with torch.inference_mode():
        want = reference(pixels)
    assert got.shape == want.shape == (len(pixels), loaded.model.embed_dim)
    cos = (got * want).sum(dim=1)
    assert float(cos.min()) >= 0.9999, (name, cos)
    info = loaded.info
    assert info["source"] == spec.split(":")[0]
    assert len(info["sha256"]) == 64 and info["embed_dim"] == got.shape[1]
    assert len(info["mean"]) == 3 and len(info["std"]) == 3
    assert info["input_size"] == (224 if name == "timm_cnn" else SIZE)
    # The teacher normalises its own input: feeding it pixels made with another mean/std is wrong.
    assert not torch.allclose(loaded.model.normalise(pixels), pixels.float() / 255.0)


def test_recorded_identity(zoo: Zoo) -> None:
    vit = load_teacher(*zoo["timm_vit"][:2]).info
    assert vit["name"] == "vit_tiny_patch16_224" and vit["patch_size"] == 8
    assert vit["licence"] == "apache-2.0" and vit["mean"] == [0.5, 0.5, 0.5]
    clip = load_teacher(*zoo["hf_clip"][:2]).info
    assert clip["embedding"].startswith("image_embeds") and clip["embed_dim"] == 16
    assert clip["preprocessing_assumed"] is True  # no processor config: OpenAI CLIP mean/std
    dino = load_teacher(*zoo["hf_dinov2"][:2]).info
    assert dino["preprocessing_assumed"] is False and dino["std"] == [0.229, 0.224, 0.225]


def test_pooling_override(zoo: Zoo, pixels: torch.Tensor) -> None:
    from transformers import Dinov2Model

    spec, folder, _ = zoo["hf_dinov2"]
    loaded = load_teacher(spec, folder, pooling="cls+mean")
    assert loaded.info["pooling"] == "cls+mean" and loaded.model.embed_dim == 64
    model = Dinov2Model.from_pretrained(folder).eval()
    with torch.inference_mode():
        tokens = model(pixel_values=loaded.model.normalise(pixels)).last_hidden_state
    want = torch.nn.functional.normalize(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1), dim=1)
    assert float((loaded.model(pixels) * want).sum(1).min()) >= 0.9999
    with pytest.raises(ConfigError, match="ViT teachers"):
        load_teacher(*zoo["timm_cnn"][:2], pooling="cls")


def test_vit_patch_grid_must_divide_the_view(zoo: Zoo) -> None:
    model = load_teacher(*zoo["timm_vit"][:2]).model
    model.check_size(48)  # dynamic_img_size: any multiple of the patch
    with pytest.raises(ConfigError, match=r"not a multiple of the teacher's patch size 8"):
        model.check_size(36)
    fixed = load_teacher(*zoo["open_clip"][:2]).model
    with pytest.raises(ConfigError, match="takes 32 px views only"):
        fixed.check_size(48)


def test_registry_errors(zoo: Zoo, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown teacher source 'foo'.*timm:NAME.*hf:PATH"):
        load_teacher("foo:bar")
    with pytest.raises(CheckpointError, match=r"not found.*timm:NAME"):
        load_teacher(str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="unknown timm model"):
        load_teacher("timm:no_such_model_x", zoo["timm_cnn"][1])
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_teacher("timm:resnet18", zoo["timm_cnn"][1])
    with pytest.raises(MissingExtraError, match=r"pip install 'disco-cache\[models\]'"):
        require("no_such_package_for_disco", "teacher source 'x:'")
