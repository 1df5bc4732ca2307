"""Shared fixtures: the real photos in ../shared/images, the tiny-random SAM, the smoke config."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO_ROOT / ".." / "shared" / "images"


@pytest.fixture(scope="session")
def shared_images() -> Path:
    """../shared/images relative to the repo root (letters.jpg, bears.jpg, plaza.jpg, horses.jpg)."""
    if not (SHARED_IMAGES / "letters.jpg").is_file():
        pytest.skip("../shared/images not present")
    return SHARED_IMAGES.resolve()


@pytest.fixture(scope="session")
def tiny_model():
    """The deterministic tiny-random SAM (seed 0) on CPU, loaded once per test session.

    Its masks are meaningless; tests use it for shapes, plumbing and determinism only.
    """
    from samseg.model import load_model

    return load_model("tiny-random", device="cpu", seed=0)


@pytest.fixture(scope="session")
def smoke_cfg():
    """The `smoke` preset (tiny-random, 8×8 points, filters opened up)."""
    from samseg.config import get_preset

    return get_preset("smoke")
