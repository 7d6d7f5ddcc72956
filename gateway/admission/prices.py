"""What an image costs: the configured [prices] table, and the estimate for one request.

Resellers publish no machine-readable price list, so prices are configuration, in USD per
image returned (the providers bill per image they hand back, not per attempt).
"""

from __future__ import annotations

from ..config import PricesConfig
from ..models import base_model

# The resolution an upstream makes when the caller leaves size to it.
DEFAULT_RESOLUTION = "1K"


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
