"""Test-wide settings: everything offline, caches in a session temp dir, deterministic torch."""
from __future__ import annotations

import os

# Set before anything imports huggingface_hub/datasets: a failed hub lookup otherwise retries for ~26 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def sapiens_vh_dir():
    """HF directory of the converted Sapiens VH model (converted once per cache)."""
    from mdm_sched import assets

    return assets.resolve("sapiens-vh")


@pytest.fixture(scope="session")
def antiberty_dir():
    """HF directory of AntiBERTy prepared from the installed wheel."""
    from mdm_sched import assets

    return assets.resolve("antiberty")
