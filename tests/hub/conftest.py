"""Tiny trained runs shared by the publishing tests: each is trained once per session (a few steps)."""
import pytest

from botnet.cli import main
from botnet.data import fashion_mnist as fm

QUIET = ["--no-progress", "--threads", "1", "--set", "train.log_every=1"]
# The detection tests' tiny BoT50 layout (3 BoT blocks in c5, stride 32), shared by the classifier
# that starts the detector, so every backbone tensor has a place.
TINY_BOT50 = "{layers: [1, 1, 1, 3], widths: [8, 16, 32, 64], stem_width: 8, strides: [1, 2, 2, 2]}"


def _needs_fmnist():
    if fm._complete(fm.SYSTEM_DIR) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo recipe (botnet_mini, strides [2, 2, 1, 1], 28 px) for 4 steps, with EMA."""
    _needs_fmnist()
    run = tmp_path_factory.mktemp("hub") / "demo-run"
    rc = main(["train", "--config", "fashion-mnist", "--max-steps", "4", "--limit-train", "128", "--limit-val", "64",
               "--batch-size", "32", "--ema", "--ema-decay", "0.5", "--no-plots", "--output", str(run), *QUIET])
    assert rc == 0
    return run


@pytest.fixture(scope="session")
def bot50_classifier(tmp_path_factory):
    """A grayscale classifier with the tiny BoT50 layout, published (starts the detector)."""
    _needs_fmnist()
    root = tmp_path_factory.mktemp("hub-bot50")
    # trained on 32 px images with tables built for 28 px (--img-size sets both sizes; the --set after it
    # keeps the tables at 28): two sizes to keep apart
    rc = main(["train", "--config", "fashion-mnist", "--model", "botnet50", "--set", f"model.kwargs={TINY_BOT50}",
               "--img-size", "32", "--set", "model.img_size=28",
               "--max-steps", "2", "--limit-train", "64", "--limit-val", "32", "--batch-size", "32", "--no-plots",
               "--output", str(root / "run"), *QUIET])
    assert rc == 0
    assert main(["publish", str(root / "run"), str(root / "published")]) == 0
    return root / "published"
