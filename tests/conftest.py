import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported
# label-scan caches go to a temporary dir, never beside ../shared/data (read-only by convention); removed at exit
if "YOLOFORGE_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="yoloforge-cache-")
    os.environ["YOLOFORGE_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def _seed_all(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Every test draws from seeded generators, so a test's data (random weights, images) is the same in CI as
# here: module-scoped fixtures are built from this import-time seed, each test starts from a fresh one.
_seed_all()


@pytest.fixture(autouse=True)
def _seeded():
    _seed_all()


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
