"""Trained models as folders the timm / Hugging Face ecosystem reads.

``botnet publish RUN_DIR OUT_DIR`` (:func:`publish_run`) writes ``config.json`` (timm's fields plus a
``botnet`` block: task, exact model options, the run's recipe), ``model.safetensors`` and a
``README.md`` model card. Such a folder (or ``hf-hub:ORG/NAME``) loads with
``timm.create_model("local-dir:OUT_DIR", pretrained=True)``, ``botnet.create_model(name,
pretrained="OUT_DIR")``, :func:`load_detector`, and every botnet command that takes a run directory.
See docs/sharing.md.
"""
from botnet.engine.rebuild import load_published
from botnet.hub.load import check_weights, load_detector
from botnet.io.published import PublishedModelError, published_folder, read_config
from botnet.models.pretrained import create_pretrained


def publish_run(*args, **kwargs):
    """See :func:`botnet.hub.publish.publish_run` (imported on use: it needs the task packages)."""
    from botnet.hub.publish import publish_run as _publish

    return _publish(*args, **kwargs)


__all__ = ["publish_run", "load_detector", "create_pretrained", "check_weights", "PublishedModelError",
           "load_published", "published_folder", "read_config"]
