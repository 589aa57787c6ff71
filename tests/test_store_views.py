"""View recipes: counter-based sampling, exact replay, ranges, and byte-identical rendering."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from store.errors import ConfigError, DatasetError
from store.views import (
    RECIPES,
    DigitsRecipe,
    MoCoV2Recipe,
    counter_uniforms,
    get_recipe,
    plan_views,
    recipe_from_dict,
    render_center,
    render_view,
)

# Renders a fixed set of views (both recipes, 32 and 224 px, every op switched on somewhere) and
# prints one sha256 over all output bytes. Run in-process and in subprocesses at 1 and 2 threads.
DIGEST_SCRIPT = """
import hashlib
import numpy as np, torch
from store.views import get_recipe, plan_views, render_view, render_center

def digest():
    h = hashlib.sha256()
    rng = np.random.default_rng(123)
    for name, size, shape, interp in [
        ("mocov2", 32, (37, 29), "bilinear"), ("digits", 32, (28, 28), "bilinear"),
        ("mocov2", 128, (140, 170), "bilinear"), ("digits", 128, (130, 150), "bilinear"),
        ("mocov2", 96, (300, 260), "bicubic"), ("digits", 40, (28, 28), "nearest"),
    ]:
        recipe = get_recipe(name, size, interp)
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        views = 24 if size == 32 else 4
        params = plan_views(recipe, 5, np.array([shape[0]]), np.array([shape[1]]), views)[0]
        for p in params:
            h.update(render_view(img, p, recipe).numpy().tobytes())
        h.update(render_center(img, recipe).numpy().tobytes())
    return h.hexdigest()
"""


def test_identical_bytes_across_processes_and_thread_counts() -> None:
    scope: dict[str, object] = {}
    exec(compile(DIGEST_SCRIPT, "<digest>", "exec"), scope)
    here = scope["digest"]()  # type: ignore[operator]
    child = (
        DIGEST_SCRIPT + "\nfor n in (1, 2):\n    torch.set_num_threads(n)\n    print(n, digest())\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=180
    )
    lines = res.stdout.split()
    assert lines == ["1", here, "2", here], "render bytes differ across processes / thread counts"


class _ViewSet(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.recipe = get_recipe("mocov2", 32)
        rng = np.random.default_rng(9)
        self.images = [
            rng.integers(0, 256, (30 + i, 26 + 2 * i, 3), dtype=np.uint8) for i in range(8)
        ]
        hs = np.array([im.shape[0] for im in self.images])
        ws = np.array([im.shape[1] for im in self.images])
        self.params = plan_views(self.recipe, 3, hs, ws, 4)

    def __len__(self) -> int:
        return 32

    def __getitem__(self, k: int) -> torch.Tensor:
        i, v = divmod(k, 4)
        return render_view(self.images[i], self.params[i, v], self.recipe)


def test_identical_bytes_across_dataloader_workers() -> None:
    ds = _ViewSet()
    direct = torch.stack([ds[k] for k in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    via_workers = torch.cat(list(loader))
    assert via_workers.shape == direct.shape
    assert via_workers.numpy().tobytes() == direct.numpy().tobytes()


def test_stored_params_replay_fresh_samples() -> None:
    recipe = get_recipe("mocov2", 32)
    hs, ws = np.array([20, 33, 64, 9]), np.array([40, 33, 17, 9])
    plan = plan_views(recipe, 11, hs, ws, 5)
    assert plan.shape == (4, 5, recipe.num_params) and plan.dtype == np.float32
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.integers(0, 256, (hs[i], ws[i], 3), dtype=np.uint8)
        for v in range(5):
            fresh = recipe.sample(11, i, v, int(hs[i]), int(ws[i]))
            assert np.array_equal(plan[i, v], fresh)
            a = render_view(img, plan[i, v].copy(), recipe)
            b = render_view(img, fresh, recipe)
            assert torch.equal(a, b)


def test_plan_independent_of_other_rows_and_call_order() -> None:
    recipe = get_recipe("digits", 32)
    hs, ws = np.full(10, 28), np.full(10, 28)
    full = plan_views(recipe, 2, hs, ws, 3)
    assert np.array_equal(full[7], plan_views(recipe, 2, hs, ws, 3)[7])
    assert np.array_equal(full[:4], plan_views(recipe, 2, hs[:4], ws[:4], 3))
    assert not np.array_equal(full, plan_views(recipe, 3, hs, ws, 3))


def test_different_slots_give_different_views() -> None:
    recipe = get_recipe("mocov2", 32)
    img = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    plan = plan_views(recipe, 0, np.array([48, 48]), np.array([48, 48]), 6)
    flat = plan.reshape(-1, recipe.num_params)
    assert len({p.tobytes() for p in flat}) == len(flat)
    rendered = {render_view(img, p, recipe).numpy().tobytes() for p in flat}
    assert len(rendered) == len(flat)


def test_counter_uniforms_are_uniform_and_keyed() -> None:
    u = counter_uniforms(0, np.arange(20000), np.zeros(20000, dtype=np.int64), 4)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.01
    assert not np.array_equal(u, counter_uniforms(1, np.arange(20000), np.zeros(20000), 4))
    again = counter_uniforms(0, np.array([123]), np.array([0]), 4)
    assert np.array_equal(again[0], u[123])


def _check_mocov2(p: np.ndarray, h: int, w: int, r: MoCoV2Recipe) -> None:
    top, left, ch, cw = (int(x) for x in p[:4])
    assert all(float(x).is_integer() for x in p[:4])
    assert 1 <= ch <= h and 1 <= cw <= w and 0 <= top <= h - ch and 0 <= left <= w - cw
    assert p[4] in (0, 1) and p[5] in (0, 1) and p[14] in (0, 1)
    for k, amount in ((6, r.brightness), (7, r.contrast), (8, r.saturation)):
        assert 1 - amount <= p[k] <= 1 + amount
    assert -r.hue <= p[9] <= r.hue
    if p[5] == 0:
        assert p[6:10].tolist() == [1, 1, 1, 0]
    assert sorted(p[10:14].tolist()) == [0, 1, 2, 3]
    assert p[15] == 0 or r.blur_sigma_min <= p[15] <= r.blur_sigma_max
    # Area/ratio inside the recipe unless the central-crop fallback was taken.
    area_frac = ch * cw / (h * w)
    ratio = cw / ch
    fits = (r.scale[0] * 0.5 <= area_frac <= 1.0 + 1e-9) and (0.5 <= ratio <= 2.0)
    fallback = top == (h - ch) // 2 and left == (w - cw) // 2
    assert fits or fallback or min(h, w) < 4


def _check_digits(p: np.ndarray, h: int, w: int, r: DigitsRecipe) -> None:
    top, left, ch, cw = (int(x) for x in p[:4])
    assert 1 <= ch <= h and 1 <= cw <= w and 0 <= top <= h - ch and 0 <= left <= w - cw
    assert -r.max_angle <= p[4] <= r.max_angle and -r.max_shear <= p[5] <= r.max_shear
    assert r.brightness[0] <= p[6] <= r.brightness[1] and r.gamma[0] <= p[7] <= r.gamma[1]


sizes = st.one_of(
    st.tuples(st.integers(1, 8), st.integers(1, 8)),  # tiny, smaller than the output
    st.tuples(st.just(1), st.integers(1, 5000)),  # 1 x N strips
    st.tuples(st.integers(1, 5000), st.just(1)),
    st.tuples(st.integers(1, 40), st.integers(2000, 100000)),  # huge aspect ratios
    st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
)


@settings(max_examples=150, deadline=None)
@given(
    hw=sizes,
    seed=st.integers(-(2**63), 2**64 - 1),
    index=st.integers(0, 2**40),
    view=st.integers(0, 4096),
)
def test_params_within_ranges(hw: tuple[int, int], seed: int, index: int, view: int) -> None:
    h, w = hw
    m = get_recipe("mocov2", 32)
    assert isinstance(m, MoCoV2Recipe)
    p = m.sample(seed, index, view, h, w)
    assert p.shape == (16,) and p.dtype == np.float32
    _check_mocov2(p, h, w, m)
    d = get_recipe("digits", 32)
    assert isinstance(d, DigitsRecipe)
    q = d.sample(seed, index, view, h, w)
    assert q.shape == (8,)
    _check_digits(q, h, w, d)


@settings(max_examples=40, deadline=None)
@given(
    hw=st.one_of(
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        st.tuples(st.just(1), st.integers(1, 600)),
        st.tuples(st.integers(1, 600), st.just(1)),
        st.tuples(st.integers(1, 4), st.integers(200, 900)),
    ),
    view=st.integers(0, 50),
)
def test_render_tiny_strips_and_extreme_aspect(hw: tuple[int, int], view: int) -> None:
    h, w = hw
    img = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for name in RECIPES:
        recipe = get_recipe(name, 16)
        out = render_view(img, recipe.sample(0, 0, view, h, w), recipe)
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        centre = render_center(img, recipe)
        assert centre.shape == (3, 16, 16)


def test_render_center_of_uniform_image_is_normalised_colour() -> None:
    recipe = get_recipe("mocov2", 32)
    img = np.full((50, 70, 3), 128, dtype=np.uint8)
    out = render_center(img, recipe)
    expect = (128 / 255 - np.array(recipe.mean)) / np.array(recipe.std)
    assert np.allclose(out.mean(dim=(1, 2)).numpy(), expect, atol=1e-5)


def test_identity_params_render_plain_resize() -> None:
    recipe = get_recipe("mocov2", 32)
    img = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    p = np.array([0, 0, 32, 32, 0, 0, 1, 1, 1, 0, 0, 1, 2, 3, 0, 0], dtype=np.float32)
    out = render_view(img, p, recipe)
    back = out * torch.tensor(recipe.std).view(3, 1, 1) + torch.tensor(recipe.mean).view(3, 1, 1)
    assert np.allclose((back * 255).permute(1, 2, 0).numpy(), img, atol=1e-3)
    flipped = p.copy()
    flipped[4] = 1
    assert torch.equal(render_view(img, flipped, recipe), out.flip(-1))


def test_box_outside_image_is_refused() -> None:
    recipe = get_recipe("digits", 32)
    p = recipe.sample(0, 0, 0, 28, 28)
    with pytest.raises(DatasetError, match="outside"):
        render_view(np.zeros((10, 10, 3), dtype=np.uint8), p, recipe)


def test_registry_and_dict_round_trip() -> None:
    with pytest.raises(ConfigError, match="valid: digits, mocov2"):
        get_recipe("simclr", 32)
    for name in RECIPES:
        r = get_recipe(name, 48)
        d = {**r.to_dict(), "seed": 3, "views": 8}
        assert recipe_from_dict(d) == r
        assert d["num_params"] == len(d["param_names"]) == r.num_params
    tampered = {**get_recipe("mocov2", 32).to_dict(), "scale": [0.08, 1.0]}
    with pytest.raises(ConfigError, match="scale"):
        recipe_from_dict(tampered)


def test_blur_and_jitter_change_pixels() -> None:
    recipe = get_recipe("mocov2", 32)
    img = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    base = np.array([0, 0, 32, 32, 0, 0, 1, 1, 1, 0, 0, 1, 2, 3, 0, 0], dtype=np.float32)
    plain = render_view(img, base, recipe)
    for k, value in ((15, 1.5), (14, 1.0)):
        p = base.copy()
        p[k] = value
        assert not torch.equal(render_view(img, p, recipe), plain)
    for k, value in ((6, 1.3), (7, 0.7), (8, 1.4), (9, 0.08)):
        p = base.copy()
        p[5], p[k] = 1, value
        assert not torch.equal(render_view(img, p, recipe), plain)
    # Blur smooths the noise image (lower pixel spread); grayscale makes the channels equal in
    # [0, 1] pixels (normalisation differs per channel).
    blurred = base.copy()
    blurred[15] = 1.5
    assert float(render_view(img, blurred, recipe).std()) < 0.8 * float(plain.std())
    grey = base.copy()
    grey[14] = 1
    g = render_view(img, grey, recipe)
    g01 = g * torch.tensor(recipe.std).view(3, 1, 1) + torch.tensor(recipe.mean).view(3, 1, 1)
    assert torch.allclose(g01[0], g01[1], atol=1e-6) and torch.allclose(g01[1], g01[2], atol=1e-6)
    assert not torch.allclose(g01[0], g01[0].mean())


def test_ops_match_torchvision() -> None:
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    from store.views.kernels import adjust_contrast_exact, gaussian_blur_exact

    recipe = get_recipe("mocov2", 32)
    img = np.random.default_rng(6).integers(0, 256, (28, 30, 3), dtype=np.uint8)
    p = np.array([1, 2, 20, 25, 0, 0, 1, 1, 1, 0, 0, 1, 2, 3, 0, 0], dtype=np.float32)
    crop = torch.from_numpy(np.ascontiguousarray(img[1:21, 2:27])).permute(2, 0, 1)
    ref = tvf.resize(crop, [32, 32], interpolation=InterpolationMode.BILINEAR, antialias=True)
    mean = torch.tensor(recipe.mean).view(3, 1, 1)
    std = torch.tensor(recipe.std).view(3, 1, 1)
    expect = (ref.float() / 255 - mean) / std
    assert torch.allclose(render_view(img, p, recipe), expect, atol=1e-6)
    x = ref.contiguous()
    for c in (0.6, 1.4):
        assert torch.equal(adjust_contrast_exact(x, c), tvf.adjust_contrast(x, c))
    for sigma in (0.3, 1.9):
        ours = gaussian_blur_exact(x, sigma, 3).int()
        theirs = tvf.gaussian_blur(x, [3, 3], [sigma, sigma]).int()
        assert (ours - theirs).abs().max() <= 1
    # Hue is torchvision's own kernel: a hue-only jitter view is exactly resize -> adjust_hue.
    hue_only = p.copy()
    hue_only[5], hue_only[9], hue_only[10:14] = 1, 0.07, [3, 0, 1, 2]
    expect_hue = (tvf.adjust_hue(x, 0.07).float() / 255 - mean) / std
    assert torch.equal(render_view(img, hue_only, recipe), expect_hue)


@pytest.mark.parametrize("interp", ["bilinear", "bicubic", "nearest"])
def test_interpolation_is_honoured(interp: str) -> None:
    """``Recipe.interpolation`` picks the resize kernel: each equals torchvision's ``resize`` with
    that mode (antialias for bilinear/bicubic, pixel-centre nearest), and the modes differ."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    modes = {
        "bilinear": (InterpolationMode.BILINEAR, True),
        "bicubic": (InterpolationMode.BICUBIC, True),
        "nearest": (InterpolationMode.NEAREST_EXACT, False),
    }
    recipe = get_recipe("digits", 32, interp)
    assert recipe.to_dict()["interpolation"] == interp
    assert recipe.to_dict()["antialias"] is modes[interp][1]
    assert recipe_from_dict(recipe.to_dict()) == recipe
    img = np.random.default_rng(8).integers(0, 256, (50, 41, 3), dtype=np.uint8)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    mode, aa = modes[interp]
    ref = tvf.resize(chw[:, 4:45, :].contiguous(), [32, 32], interpolation=mode, antialias=aa)
    mean = torch.tensor(recipe.mean).view(3, 1, 1)
    std = torch.tensor(recipe.std).view(3, 1, 1)
    assert torch.equal(render_center(img, recipe), (ref.float() / 255 - mean) / std)
    others = [render_center(img, get_recipe("digits", 32, m)) for m in modes if m != interp]
    assert all(not torch.equal(render_center(img, recipe), o) for o in others)


def test_unknown_interpolation_and_stored_mismatch_are_refused() -> None:
    with pytest.raises(ConfigError, match="valid: bicubic, bilinear, nearest"):
        get_recipe("mocov2", 32, "lanczos")
    stored = {**get_recipe("mocov2", 32, "bicubic").to_dict(), "antialias": False}
    with pytest.raises(ConfigError, match="antialias"):
        recipe_from_dict(stored)


@pytest.mark.parametrize("name", ["mocov2", "digits"])
def test_sampled_params_lie_in_declared_ranges(name: str) -> None:
    """``Recipe.param_ranges`` (what the service validates against) covers every sampled value."""
    recipe = get_recipe(name, 32)
    n = 500
    rows = np.arange(n)
    params = recipe.sample_batch(
        7, rows, rows % 3, np.full(n, 40 + rows % 17), np.full(n, 28 + rows % 23)
    )
    ranges = recipe.param_ranges()
    assert ranges, "a recipe must declare its parameter ranges"
    for j, pname in enumerate(recipe.param_names):
        if pname not in ranges:
            assert pname.startswith("crop_")
            continue
        lo, hi = ranges[pname]
        assert params[:, j].min() >= lo - 1e-4 and params[:, j].max() <= hi + 1e-4, pname
