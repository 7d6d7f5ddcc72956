"""The Nano Banana models: what each can make, from Google's published size tables.

Shared by translation (size -> ratio/resolution), the upstreams (model names) and the
mock (which draws images of exactly these sizes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

# The ratios every upstream accepts (AceDataCloud/XHuoAPI list exactly these; defapi more).
ASPECT_RATIOS: tuple[str, ...] = ("1:1", "3:2", "2:3", "16:9", "9:16", "4:3", "3:4")
RESOLUTIONS: tuple[str, ...] = ("1K", "2K", "4K")

# Google's published output sizes at 1K; 2K doubles and 4K quadruples each side.
_FLASH_25_SIZES = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
_GEMINI_3_SIZES = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}


@dataclass(frozen=True)
class ModelSpec:
    """What one Nano Banana model can make."""

    name: str
    resolutions: tuple[str, ...]
    sizes: Mapping[str, tuple[int, int]]

    @property
    def takes_resolution(self) -> bool:
        """True when the model makes more than one resolution, so an upstream call should
        say which."""
        return len(self.resolutions) > 1


MODELS: dict[str, ModelSpec] = {
    "nano-banana": ModelSpec("nano-banana", ("1K",), _FLASH_25_SIZES),
    "nano-banana-2": ModelSpec("nano-banana-2", RESOLUTIONS, _GEMINI_3_SIZES),
    "nano-banana-pro": ModelSpec("nano-banana-pro", RESOLUTIONS, _GEMINI_3_SIZES),
    "nano-banana-2-lite": ModelSpec("nano-banana-2-lite", ("1K",), _GEMINI_3_SIZES),
}


def base_model(name: str) -> str:
    """'nano-banana-pro:official' -> 'nano-banana-pro' (the variant decides price, not pixels)."""
    return name.split(":", 1)[0]


def takes_resolution(model: str) -> bool:
    """Whether an upstream call for this model (a variant too) should name a resolution."""
    spec = MODELS.get(base_model(model))
    return spec is not None and spec.takes_resolution


def _ratio_value(ratio: str) -> float:
    a, b = ratio.split(":")
    return int(a) / int(b)


@functools.lru_cache(maxsize=1024)
def nearest_aspect_ratio(width: int, height: int, choices: tuple[str, ...] = ASPECT_RATIOS) -> str:
    """The supported ratio closest to width:height, compared on a log scale so 2:1 and 1:2
    are equally far from 1:1. (Cached: apps ask for a handful of sizes, on every request.)"""
    target = math.log(width / height)
    return min(choices, key=lambda r: abs(math.log(_ratio_value(r)) - target))


# A tier is enough when its picture's long side is at least this share of the one asked:
# OpenAI's 1536x1024 is served by a 1K 3:2 picture (1264x848), not billed at 2K.
TIER_SHARE = 0.8
_SCALE = {"1K": 1, "2K": 2, "4K": 4}


def tier_for(model: str, aspect_ratio: str, width: int, height: int) -> str:
    """The smallest resolution tier (1K, 2K, 4K) whose picture at the ratio, by the model's
    size table, has a long side of at least TIER_SHARE of the requested long side; 4K when
    none has. Whether the model makes that tier is the caller's question."""
    spec = MODELS.get(base_model(model), MODELS["nano-banana"])
    w, h = spec.sizes.get(aspect_ratio, spec.sizes["1:1"])
    wanted = TIER_SHARE * max(width, height)
    for tier in RESOLUTIONS:
        if max(w, h) * _SCALE[tier] >= wanted:
            return tier
    return RESOLUTIONS[-1]


def produced_size(model: str, aspect_ratio: str | None, resolution: str | None) -> tuple[int, int]:
    """The pixel size the model makes for a ratio and resolution (Google's tables)."""
    spec = MODELS.get(base_model(model), MODELS["nano-banana"])
    w, h = spec.sizes.get(aspect_ratio or "1:1", spec.sizes["1:1"])
    scale = _SCALE.get(resolution or "1K", 1)
    if (resolution or "1K") not in spec.resolutions:
        scale = 1
    return w * scale, h * scale
