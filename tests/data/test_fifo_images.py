"""Files of a shared run or data folder that are not what their names say: never a hang, never a
RecursionError."""
import os

import pytest

from botnet.data.coco import read_image_rgb
from botnet.engine.metrics_log import read_jsonl
from botnet.hub.publish import _json


def test_a_fifo_among_coco_images_is_refused_not_read(tmp_path):
    fifo = tmp_path / "000001.png"
    os.mkfifo(fifo)  # opening it for reading without O_NONBLOCK would block forever
    with pytest.raises(OSError, match="FIFO"):
        read_image_rgb(fifo)


def test_deep_lines_in_metrics_jsonl_are_skipped(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "loss": 2.0}\n' + "[" * 100_000 + "]" * 100_000 + '\n{"step": 2, "loss": 1.0}\n[1]\n')
    assert read_jsonl(f) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]


def test_a_deep_summary_is_read_as_empty_by_publish(tmp_path):
    f = tmp_path / "summary.json"
    f.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    assert _json(f) == {}
    f.write_text('{"status": "completed", "best": {"value": 0.9}}')  # an intact one is read as it is
    assert _json(f) == {"status": "completed", "best": {"value": 0.9}}
