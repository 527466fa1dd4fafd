"""The README.md model card of a published folder (Hugging Face front matter + Markdown)."""
from __future__ import annotations

from typing import Any

__all__ = ["CITATION", "classification_card", "detection_card"]

CITATION = """@inproceedings{srinivas2021bottleneck,
  title     = {Bottleneck Transformers for Visual Recognition},
  author    = {Srinivas, Aravind and Lin, Tsung-Yi and Parmar, Niki and Shlens, Jonathon and Abbeel, Pieter
               and Vaswani, Ashish},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021},
  note      = {arXiv:2101.11605}
}"""


def _front(tags: list[str], pipeline: str, library: str | None) -> str:
    lines = ["---", "license: apache-2.0", f"pipeline_tag: {pipeline}"]
    if library:
        lines.append(f"library_name: {library}")
    lines += ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v):.2f}"


def _num(v: Any) -> str:
    return "-" if v is None else f"{float(v):.4f}"


def _common_tail(info: dict[str, Any]) -> list[str]:
    """Training command, config, cost, provenance and citation: the same for every task."""
    return [
        "## Training", "",
        "Reproduce with the recipe below (every key as resolved when the run started; save it as `config.yaml`):", "",
        "```bash", info["command"], "```", "",
        "<details><summary>config.yaml</summary>", "", "```yaml", info["config_yaml"].rstrip(), "```", "",
        "</details>", "",
        f"Training: {info['steps']} steps, {info['epochs']:.2f} epochs, {info['train_seconds']:.0f} s of training "
        f"({info['status']}), {info['world_size']} process(es), device setting `{info['device']}`.", "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| architecture | `{info['arch']}` (timm name `{info['timm_name']}`) |",
        f"| options | `{info['model_args']}` |",
        f"| parameters | {info['params']:,} |",
        f"| GMACs | {info['gmacs']} |",
        f"| weights | {info['weights']} |",
        f"| trained | {info['trained_date']} |",
        f"| published | {info['published_date']} with botnet {info['botnet_version']} |",
        f"| hardware | {info['hardware']} |", "",
        "## Citation", "", "```bibtex", CITATION, "```", "",
    ]


def classification_card(info: dict[str, Any]) -> str:
    """Card of an image classifier: data, accuracy table (top-1/top-5, per class), how to load it."""
    m = info["metrics"]
    out = [_front(["image-classification", "timm", "botnet", "bottleneck-transformer"], "image-classification",
                  "timm"),
           f"# {info['title']}", "",
           f"A BoTNet-family image classifier (`{info['arch']}`, Bottleneck Transformers, arXiv 2101.11605) trained "
           f"with botnet on {info['dataset']}.", "",
           "## Use", "", "```python",
           "import botnet, timm   # pip install botnet: it registers the BoTNet models in timm",
           f"model = timm.create_model(\"local-dir:{info['name']}\", pretrained=True).eval()   "
           f"# or hf-hub:ORG/{info['name']}",
           "cfg = timm.data.resolve_data_config({}, model=model)   # the preprocessing it was trained with",
           "transform = timm.data.create_transform(**cfg)", "```", "",
           "`botnet.create_model(\"" + info["arch"] + f"\", pretrained=\"{info['name']}\")` gives the same model; "
           f"`botnet predict IMAGE --checkpoint {info['name']}` and `botnet eval {info['name']}` take the folder as "
           f"they take a run directory.", "",
           f"Preprocessing: input {info['input_size']}, mean {info['mean']}, std {info['std']}, "
           f"crop_pct {info['crop_pct']}, {info['interpolation']} interpolation.", "",
           "## Results", "", m["source"], "",
           "| metric | value |", "|---|---|",
           f"| top-1 accuracy (%) | {_pct(m.get('top1'))} |", f"| top-5 accuracy (%) | {_pct(m.get('top5'))} |",
           f"| mean cross-entropy | {_num(m.get('loss'))} |",
           *([f"| top-1 accuracy, each image averaged with its mirror image (%) | {_pct(m['tta_top1'])} |"]
             if m.get("tta_top1") is not None else []),
           f"| images | {m.get('n', '-')} |", ""]
    if m.get("per_class"):
        out += ["| class | images | accuracy (%) |", "|---|---|---|"]
        out += [f"| {c} | {n} | {_pct(a)} |" for c, (n, a) in m["per_class"].items()] + [""]
    else:
        out += ["Per-class accuracy was not measured (published with --no-eval or without the data).", ""]
    return "\n".join(out + _common_tail(info))


def detection_card(info: dict[str, Any]) -> str:
    """Card of a detector: data, COCO box/mask AP table with per-class AP, how to load it."""
    out = [_front(["object-detection", "instance-segmentation", "botnet", "mask-rcnn", "torchvision"],
                  "object-detection", None),
           f"# {info['title']}", "",
           f"A torchvision {info['kind']} detector over a BoTNet-FPN backbone (`{info['backbone']}`, Bottleneck "
           f"Transformers, arXiv 2101.11605) trained with botnet on {info['dataset']}.", "",
           "## Use", "", "```python", "import botnet.hub",
           f"detector = botnet.hub.load_detector(\"{info['name']}\")   # torchvision model; or hf-hub:ORG/NAME",
           "```", "",
           f"`botnet detect predict {info['name']} IMAGE...` draws its detections; `botnet detect eval {info['name']}` "
           f"measures it. Classes: {', '.join(info['class_names'])}.", "",
           "## Results", "", info["metrics_source"], ""]
    out += info["metrics_md"] + [""]
    return "\n".join(out + _common_tail(info))
