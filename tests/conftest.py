"""Test-wide settings: everything offline, converted models in a per-run temp cache, two torch threads."""
from __future__ import annotations

import os

# Set before anything imports huggingface_hub/datasets: a failed hub lookup otherwise retries for ~26 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Converted models go to a fresh per-run cache (unless the caller chose one), so the suite never
# depends on what an earlier run or the user left in ~/.cache/mdm_sched; conversion costs ~7 s.
if "MDM_SCHED_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["MDM_SCHED_CACHE"] = tempfile.mkdtemp(prefix="mdm_sched_test_cache_")
    atexit.register(shutil.rmtree, os.environ["MDM_SCHED_CACHE"], ignore_errors=True)  # ours: removed at exit

import pytest
import torch

if "OMP_NUM_THREADS" not in os.environ:  # scripts/test_all.sh runs suites side by side with one thread each
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_report_header(config):
    import transformers

    return f"transformers {transformers.__version__}, torch {torch.__version__}"


def pytest_sessionstart(session):
    """Under scripts/test_compat.sh the run must see the transformers release it was started for."""
    expected = os.environ.get("MDM_SCHED_EXPECT_TRANSFORMERS")
    if expected:
        import transformers

        if transformers.__version__ != expected:
            raise pytest.UsageError(f"MDM_SCHED_EXPECT_TRANSFORMERS={expected} but transformers "
                                    f"{transformers.__version__} is imported from {transformers.__file__}")


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
