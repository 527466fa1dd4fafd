import pytest

from botnet.data import fashion_mnist as fm

# A very small botnet_mini (same code path, same BoT blocks) so the training tests stay fast.
TINY = ["--set", "model.kwargs={widths: [4, 8, 8, 16], stem_width: 8}", "--no-progress", "--no-plots",
        "--eval-every", "0", "--set", "train.log_every=1", "--threads", "1"]


@pytest.fixture
def tiny_train_args():
    if fm._complete(fm.SYSTEM_DIR) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return ["train", "--limit-train", "256", "--limit-val", "64", *TINY]
