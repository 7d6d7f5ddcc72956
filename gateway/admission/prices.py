"""What an image costs: the configured [prices] table, and the estimate for one request.

Resellers publish no machine-readable price list, so prices are configuration, in USD per
image returned (the providers bill per image they hand back, not per attempt). An image
is priced at the resolution it was made at, read from its size, not the one asked for: a
provider may ignore the request's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from ..config import PricesConfig
from ..models import MODELS, base_model, nearest_aspect_ratio, produced_size

# The resolution an upstream makes when the caller leaves size to it.
DEFAULT_RESOLUTION = "1K"
# How much smaller than an image's long side a tier's may be and still be its tier:
# encoders round sides to multiples of 8 or 16 and providers crop or pad a little, but a
# tier's next step doubles the side, so 10% tells them apart with room on both sides.
_TIER_SLACK = 0.9


@lru_cache(maxsize=1024)  # a few models x a few sizes; asked twice per request (cost, log)
def made_resolution(model: str, size: tuple[int, int]) -> str:
    """The resolution tier ("1K", "2K", "4K") an image of `size` was made at by `model`:
    the smallest tier the model makes whose long side at the image's aspect ratio
    (Google's tables) is at least 90% of the image's; the largest when none is."""
    spec = MODELS.get(base_model(model), MODELS["nano-banana"])
    width, height = size
    ratio = nearest_aspect_ratio(width, height, tuple(spec.sizes))
    for tier in spec.resolutions:
        if max(produced_size(spec.name, ratio, tier)) >= max(width, height) * _TIER_SLACK:
            return tier
    return spec.resolutions[-1]


class PriceList:
    """Per-image prices by model (a variant may have its own) and resolution."""

    def __init__(self, cfg: PricesConfig) -> None:
        self._table = cfg.table

    def per_image(self, model: str, resolution: str | None) -> float | None:
        """The price of one image, or None when the model has no configured price.

        'nano-banana-pro:official' uses its own entry if it has one, else its base model's.
        """
        prices = self._table.get(model) or self._table.get(base_model(model))
        if prices is None:
            return None
        return prices.get(resolution or DEFAULT_RESOLUTION)

    def estimate(self, model: str, resolution: str | None, images: int) -> float | None:
        """Estimated cost of `images` images, or None when the model has no price."""
        price = self.per_image(model, resolution)
        if price is None:
            return None
        return round(price * images, 6)

    def estimate_made(
        self, model: str, resolution: str | None, sizes: Sequence[tuple[int, int] | None]
    ) -> float | None:
        """Estimated cost of images made, each at the tier of its size (`resolution`, the
        one asked for, where a size is unknown); None when one of them has no price."""
        total = 0.0
        for size in sizes:
            price = self.per_image(model, made_resolution(model, size) if size else resolution)
            if price is None:
                return None
            total += price
        return round(total, 6)
