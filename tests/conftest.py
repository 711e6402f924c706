"""Shared fixtures. Tests that need real data read it from $METATICKET_DATA and fail (not skip) without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("METATICKET_DATA")
    if not root or not (Path(root) / "omniglot" / "images_background.zip").is_file():
        pytest.fail("this test needs real Omniglot: set METATICKET_DATA to a folder holding "
                    "omniglot/images_background.zip and images_evaluation.zip (CI uses ../shared/data)")
    return Path(root)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The decoded-dataset cache (shared with run.py so the decode happens once per machine)."""
    return Path(os.environ.get("METATICKET_CACHE") or Path.home() / ".cache" / "metaticket")


@pytest.fixture(scope="session")
def omniglot(data_root: Path, cache_dir: Path):
    from metaticket.data.omniglot import load_omniglot

    return load_omniglot(data_root / "omniglot", cache_dir, progress=False)
