import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow"))
SHARED_DATA = ROOT.parent / "shared" / "data"
BOTTLE = SHARED_DATA / "mvtec-bottle-256"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset (two categories) shared by the tests that only read it."""
    from dfr import synthetic

    root = tmp_path_factory.mktemp("synth")
    for cat in ("disc", "grain"):
        synthetic.generate_category(root, cat, n_train=8, n_test_good=3, n_test_defect=2, seed=0)
    return root
