"""The training curves: written as PNGs from metrics.jsonl records, without warnings when a run logged
nothing, and no plot for what a run did not log."""
import warnings

from botnet.viz.plots import plot_curves


def test_curves_of_a_run_with_values_and_of_one_without(tmp_path):
    records = [{"phase": "train", "step": s, "loss": 2.0 / s} for s in range(1, 6)]
    records.append({"phase": "val", "step": 5, "loss": 0.5, "top1": 80.0, "top5": 99.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when asked for a legend with nothing in it
        full = plot_curves(records, tmp_path / "full", loss_label="cross-entropy")
        empty = plot_curves([], tmp_path / "empty")
    assert sorted(p.name for p in full) == ["accuracy.png", "loss.png"]
    assert [p.name for p in empty] == ["loss.png"] and not (tmp_path / "empty" / "accuracy.png").exists()
    for p in full + empty:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
