"""View recipes: sample augmentation parameters per (seed, sample, view) and render them exactly.

One job per module, re-exported flat here (``from store.views import render_view`` is the API):

- :mod:`~store.views.rng` — counter-based uniforms keyed by (plan seed, row, view);
- :mod:`~store.views.crop` — RandomResizedCrop box sampling and the uint8 crop + resize;
- :mod:`~store.views.kernels` — exact uint8 kernels (contrast, blur) and normalisation;
- :mod:`~store.views.recipes` — the named recipes (parameter schema, sampling, render) + registry;
- :mod:`~store.views.plan` — the (N, V, P) view plan;
- :mod:`~store.views.render` — the one render function both sides call;
- :mod:`~store.views.batched` — the batched renderer (B views at once, CPU or CUDA; same bytes).
- :mod:`~store.views.fingerprint` — the render fingerprint that refuses silent library drift.

Determinism: every step runs on uint8 tensors with kernels whose output does not depend on a
cross-thread reduction; conversion to float and normalisation come last. The bytes are therefore
the same in any process, at any torch thread count, and in DataLoader workers.
"""

from store.views.batched import (
    RENDER_BOUND,
    RENDERER_CHOICES,
    RENDERERS,
    aa_resize_weights,
    normalise_views,
    render_centers,
    render_views,
    render_views_normalised,
    resize_crops,
    resolve_renderer,
)
from store.views.crop import INTERPOLATIONS, crop_resize, sample_crop
from store.views.fingerprint import (
    check_render,
    library_versions,
    probe_images,
    render_fingerprint,
    render_record,
)
from store.views.kernels import (
    adjust_contrast_exact,
    blur_kernel_size,
    gaussian_blur_exact,
    normalise,
)
from store.views.plan import plan_views
from store.views.recipes import (
    RECIPES,
    DigitsRecipe,
    MoCoV2Recipe,
    Recipe,
    get_recipe,
    recipe_from_dict,
)
from store.views.render import render_center, render_view
from store.views.rng import counter_uniforms

__all__ = [
    "INTERPOLATIONS",
    "RECIPES",
    "RENDERERS",
    "RENDERER_CHOICES",
    "RENDER_BOUND",
    "DigitsRecipe",
    "MoCoV2Recipe",
    "Recipe",
    "aa_resize_weights",
    "adjust_contrast_exact",
    "blur_kernel_size",
    "check_render",
    "counter_uniforms",
    "crop_resize",
    "gaussian_blur_exact",
    "get_recipe",
    "library_versions",
    "normalise",
    "normalise_views",
    "plan_views",
    "probe_images",
    "recipe_from_dict",
    "render_center",
    "render_centers",
    "render_fingerprint",
    "render_record",
    "render_view",
    "render_views",
    "render_views_normalised",
    "resize_crops",
    "resolve_renderer",
    "sample_crop",
]
