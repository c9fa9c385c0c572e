import os
from pathlib import Path

import pytest

import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "2")
# label-scan caches go to a temporary dir, never beside ../shared/data (read-only by convention)
os.environ.setdefault("YOLOFORGE_CACHE_DIR", tempfile.mkdtemp(prefix="yoloforge-cache-"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO128 = SHARED / "data" / "coco128"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic shapes dataset (16 train / 8 val images at 96 px): its data yaml."""
    from yoloforge.data.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    return Path(make_shapes_dataset(root, n_train=16, n_val=8, imgsz=96, seed=0))


@pytest.fixture
def coco128() -> Path:
    if not (COCO128 / "data.yaml").is_file():
        pytest.skip(f"coco128 not found at {COCO128} (it ships in ../shared, beside the repo, in CI only)")
    return COCO128 / "data.yaml"
