"""``botnet publish RUN_DIR OUT_DIR``: a training run as a folder timm and the Hugging Face Hub read.

The folder is written in a temporary sibling folder and swapped into place at the end, so a
failure (bad run, missing data, Ctrl-C, a kill) leaves nothing half-written under OUT_DIR: it holds
the earlier publish or the new one. ``--force`` replaces only a folder that holds exactly an earlier
publish (its three files, config.json with botnet's publish format); anything else is refused.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from botnet.errors import CheckpointError, ConfigError, UserInputError, one_line
from botnet.io.atomic import make_shareable
from botnet.io.dirswap import remove_written, swap_into_place
from botnet.io.folders import check_output_dir
from botnet.io.temp_beside import TempBeside, remove_abandoned
from botnet.io.published import CARD_NAME, CONFIG_NAME, FORMAT, WEIGHTS_NAME, published_folder
from botnet.io.weights import resolve_checkpoint
from botnet.log import get_logger

__all__ = ["publish_run", "WEIGHT_CHOICES", "run_preprocessing", "is_previous_publish"]

log = get_logger("hub")
WEIGHT_CHOICES = ("best", "last", "ema")
PUBLISHED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)  # all that publish writes
_MAX_CONFIG_BYTES = 16 << 20


def publish_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, weights: str = "best",
                force: bool = False, evaluate: bool = True, hardware: str | None = None) -> Path:
    """Write ``OUT_DIR/{config.json, model.safetensors, README.md}`` for a run of any task; ``weights`` is ``best`` (best.safetensors, else last), ``last`` or ``ema`` (the EMA
    weights of the last checkpoint). ``evaluate`` re-measures a classifier on the run's validation
    data for the card (per-class accuracy); without it the card shows the run's recorded numbers."""
    from botnet.engine.rebuild import load_model, task_of

    run, out = Path(run_dir), Path(out_dir)
    _check_paths(run, out, force)
    wpath, use_ema = _weights_file(run, weights)
    model, meta = load_model(wpath, use_ema=use_ema)
    info = dict(_provenance(run, wpath, meta, weights, hardware), name=out.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a killed publish left its new folder, or (killed right after the swap) the earlier publish: the
    # same three files either way
    remove_abandoned(out, lambda p: remove_written(p, PUBLISHED_FILES), what="an interrupted publish")
    claim = TempBeside(out, folder=True)
    tmp = claim.path
    try:
        task = task_of(meta)
        if task == "classification":  # timm's own format, so timm.create_model reads the folder
            _write_classifier(model, meta, info, tmp, evaluate)
        elif task == "detection":  # a detector's build options, label map and COCO results
            _write_detector(model, meta, info, tmp, run)
        else:  # any other task writes its own files (by default botnet's generic config.json and card)
            from botnet.tasks import load_task

            load_task(task).publish(model, meta, info, tmp)
        _save_weights(model, tmp / WEIGHTS_NAME)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        claim.close()
    return out


def _check_paths(run: Path, out: Path, force: bool) -> None:
    """Every reason to refuse, before any work: one line each, nothing written."""
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a run directory (the --output of botnet train / botnet detect "
                                   f"train)")
    if published_folder(run) is not None:
        raise CheckpointError(f"{run} is already a published model folder; give the run directory it came from")
    if out.resolve() == run.resolve():
        raise ConfigError(f"OUT_DIR {out} is the run directory itself; choose a new folder")
    if out.resolve() in run.resolve().parents:
        raise ConfigError(f"OUT_DIR {out} holds the run directory {run}; choose a new folder (publish never replaces "
                          f"a folder that holds a run)")
    if out.is_symlink():
        raise ConfigError(f"OUT_DIR {out} is a symbolic link; give a new folder, or the linked folder itself")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT_DIR {out} is a file; choose a new folder")
    if out.is_dir() and any(out.iterdir()):
        earlier = is_previous_publish(out)
        if not force:
            raise ConfigError(f"OUT_DIR {out} exists and is not empty; choose a new folder" +
                              (" or pass --force to replace this earlier publish" if earlier else ""))
        if not earlier:
            raise ConfigError(f"OUT_DIR {out} is not a folder written by botnet publish (it holds "
                              f"{_first_other(out)}); --force replaces only an earlier publish: choose a new or "
                              f"empty folder")
    check_output_dir(out.parent, "OUT_DIR's parent folder")


def is_previous_publish(folder: Path) -> bool:
    """True for a folder holding exactly what publish writes: its three files and nothing else, with
    config.json carrying botnet's publish format (so --force can never delete anything else)."""
    try:
        entries = list(folder.iterdir())
        if {p.name for p in entries} - set(PUBLISHED_FILES) or CONFIG_NAME not in {p.name for p in entries}:
            return False
        if any(p.is_symlink() or not p.is_file() for p in entries):
            return False
        cfg = folder / CONFIG_NAME
        if cfg.stat().st_size > _MAX_CONFIG_BYTES:
            return False
        block = json.loads(cfg.read_text()).get("botnet")
        return isinstance(block, dict) and block.get("format") == FORMAT
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def _first_other(folder: Path) -> str:
    """A file that shows the folder is not an earlier publish, for the message."""
    names = sorted(p.name for p in folder.iterdir())
    others = [n for n in names if n not in PUBLISHED_FILES]
    return others[0] if others else f"a {CONFIG_NAME} botnet publish did not write"


def _weights_file(run: Path, weights: str) -> tuple[Path, bool]:
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"--weights {weights!r}: choose one of {', '.join(WEIGHT_CHOICES)}")
    prefer = ("best", "last") if weights == "best" else ("last",)
    return resolve_checkpoint(run, prefer), weights == "ema"


def _swap_in(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place in one step (a kill leaves the old or the new publish);
    an earlier publish is then emptied of the three files publish wrote, and nothing else."""
    for f in (tmp, *tmp.iterdir()):  # mkdtemp made the folder private; a published folder is for sharing
        make_shareable(f)
    if out.is_dir() and any(out.iterdir()) and not is_previous_publish(out):  # changed since the check
        raise ConfigError(f"OUT_DIR {out} changed while publishing and is no longer an earlier publish; nothing "
                          f"was replaced")
    old = swap_into_place(tmp, out)
    if old is not None:
        remove_written(old, PUBLISHED_FILES)


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})  # the Hub's convention for PyTorch weights


def _json(path: Path) -> dict[str, Any]:
    from botnet.validation import loads_json

    try:
        out = loads_json(path.read_text(), source=str(path))  # depth-capped: a run folder may be shared
    except (OSError, ValueError, UserInputError):
        return {}
    return out if isinstance(out, dict) else {}


def _trained_date(run: Path) -> str:
    """Date of the run's last logged record (else of its summary file), UTC."""
    stamp = None
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        stamp = float(json.loads(lines[-1])["time"]) if lines else None
    except (OSError, ValueError, KeyError, IndexError, TypeError, RecursionError):
        pass
    if stamp is None:
        f = run / "summary.json"
        stamp = f.stat().st_mtime if f.exists() else None
    if stamp is None:
        return "not recorded"
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d")


def _publishing_machine() -> str:
    from botnet.engine.devices import describe_machine

    return describe_machine() + " (the machine that ran botnet publish; the run did not record its own)"


def _provenance(run: Path, wpath: Path, meta: dict[str, Any], weights: str, hardware: str | None) -> dict[str, Any]:
    """What the card says about where the weights come from, for any task."""
    import yaml

    from botnet import __version__
    from botnet.engine.rebuild import task_of

    summary = _json(run / "summary.json")
    cfg = meta.get("config") or _json(run / "config.json")
    extra = meta.get("extra") or {}
    which = "ema" if weights == "ema" else str(extra.get("weights", "raw"))
    best = extra.get("best") or summary.get("best") or {}
    best_txt = (f"; best {best.get('metric')} {best.get('value'):.4g} at step {best.get('step')}"
                if weights == "best" and best.get("value") is not None else "")
    desc = (f"{'EMA weights from the training state of ' if weights == 'ema' else ''}{wpath.name} "
            f"(step {meta.get('step', '?')}{best_txt})")
    from botnet.tasks import get_spec

    cmd = get_spec(task_of(meta)).train_command
    command = summary.get("command") or f"{cmd} --config config.yaml"  # runs before summary.json kept it
    return {
        "which": which, "weights": desc, "config": cfg, "config_yaml": yaml.safe_dump(cfg, sort_keys=False),
        "command": command, "steps": summary.get("steps", meta.get("step", 0)),
        "epochs": float(summary.get("epochs", meta.get("epoch", 0)) or 0),
        "train_seconds": float(summary.get("train_seconds", 0) or 0), "status": summary.get("status", "unknown"),
        "world_size": summary.get("world_size", 1), "device": (cfg.get("train") or {}).get("device", "auto"),
        "trained_date": _trained_date(run),
        "published_date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hardware or summary.get("hardware") or _publishing_machine(), "botnet_version": __version__, "summary": summary,
    }


def run_preprocessing(cfg: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """timm's data config for what the run's evaluation did (size, mean/std, crop, interpolation)."""
    from botnet.data.builder import dataset_stats

    d = cfg["data"]
    mean, std = dataset_stats(cfg, in_chans)
    size = int(d["eval_img_size"] or d["img_size"])
    fmnist = d["dataset"] == "fashion-mnist"
    # Fashion-MNIST is evaluated whole (files are resized to size x size, bilinear); folders are
    # resized to size / crop_pct and centre-cropped, as timm's eval transform does.
    return {"input_size": (in_chans, size, size), "mean": tuple(mean), "std": tuple(std),
            "crop_pct": 1.0 if fmnist else float(d["crop_pct"]), "crop_mode": "center",
            "interpolation": "bilinear" if fmnist else str(d["interpolation"])}


# ----------------------------------------------------------------------------- classification
_SOURCE_KEYS = ("file", "source", "url", "hf_hub_id", "hf_hub_filename", "state_dict", "tag")


def _write_classifier(model, meta: dict[str, Any], info: dict[str, Any], tmp: Path, evaluate: bool) -> None:
    """config.json through timm's own writer (so timm reads it back), then the card."""
    from timm.models import PretrainedCfg
    from timm.models._hub import save_config_for_hf

    from botnet.classification import CLASSIFICATION_SCHEMA
    from botnet.hub.card import classification_card
    from botnet.models import TIMM_NAMES
    from botnet.models.profile import profile_model

    cfg = CLASSIFICATION_SCHEMA.from_saved(info["config"])
    kw, names = dict(meta["model_kwargs"]), list(meta.get("class_names") or [])
    data = run_preprocessing(cfg, int(kw.get("in_chans", 3)))
    # timm rebuilds PretrainedCfg(**pretrained_cfg): only its fields, and no weight source of ours
    fields = {f.name for f in dataclasses.fields(PretrainedCfg)} - set(_SOURCE_KEYS)
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k in fields}
    block = {"format": FORMAT, "task": "classification", "arch": meta["arch"], "model_kwargs": kw,
             "weights": info["which"], "run_config": info["config"], "botnet_version": info["botnet_version"]}
    save_config_for_hf(model, str(tmp / CONFIG_NAME), model_config={"label_names": names, "botnet": block},
                       model_args={k: v for k, v in kw.items() if k != "num_classes"}, data_config=data)
    prof = profile_model(meta["arch"], **{**kw, "img_size": data["input_size"][-1]})  # at the size it was fed
    card = dict(info, title=f"{meta['arch']} on {cfg['data']['dataset']}", arch=meta["arch"],
                timm_name=TIMM_NAMES.get(meta["arch"], meta["arch"]),
                model_args=json.dumps(kw), params=sum(p.numel() for p in model.parameters()),
                gmacs=f"{prof.gmacs:.3f} at {prof.img_size[0]}x{prof.img_size[1]} px", dataset=_dataset_text(cfg),
                metrics=_classifier_metrics(model, cfg, names, meta, info, evaluate), **data)
    (tmp / CARD_NAME).write_text(classification_card(card))


def _dataset_text(cfg: dict[str, Any]) -> str:
    d = cfg["data"]
    name = "Fashion-MNIST" if d["dataset"] == "fashion-mnist" else f"the image folder {d['root']}"
    limits = [f"first {d[k]} {w} images" for k, w in (("limit_train", "training"), ("limit_val", "validation"))
              if d.get(k)]
    return name + (f" ({', '.join(limits)})" if limits else "") + f", {d['img_size']} px"


def _classifier_metrics(model, cfg, names, meta, info, evaluate: bool) -> dict[str, Any]:
    """Accuracy of the published weights: measured now on the run's validation data, else recorded."""
    if evaluate:
        try:
            return _measure(model, cfg, names)
        except UserInputError as e:
            log.warning(f"could not evaluate on the run's validation data ({one_line(e)}); the card shows the "
                        f"accuracy the run recorded")
    extra, final = meta.get("extra") or {}, (info["summary"].get("final") or {})
    rec = dict(extra.get("val") or {}) if info["weights"].startswith("best") else {}
    pre = "ema_" if info["which"] == "ema" and "ema_top1" in rec else ""
    got = {k: rec.get(pre + k) for k in ("top1", "top5", "loss", "n")} if rec else \
        dict(final.get("ema" if info["which"] == "ema" else "raw") or {})
    return {**{k: got.get(k) for k in ("top1", "top5", "loss")}, "n": int(got["n"]) if got.get("n") else None,
            "per_class": None, "source": "Accuracy recorded by the training run's last validation of these weights"
                                         + _tta_text(cfg) + "."}


def _tta_text(cfg: dict[str, Any]) -> str:
    tta = cfg["data"].get("eval_tta", "none")
    return "" if tta == "none" else f", with test-time augmentation ({tta}: each image and its mirror image averaged)"


def _measure(model, cfg: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The task's own checkpoint evaluation, without and (when the run used one) with its test-time augmentation."""
    import copy

    from botnet.tasks import load_task

    task, cpu = load_task("classification"), torch.device("cpu")
    c = copy.deepcopy(cfg)
    tta = c["data"].get("eval_tta", "none")
    c["data"].update(limit_train=None, num_workers=0, eval_tta="none")
    res = task.evaluate_checkpoint(model, {"class_names": names}, c, cpu)
    tta_top1 = None
    if tta != "none":
        c["data"]["eval_tta"] = tta
        tta_top1 = task.evaluate_checkpoint(model, {"class_names": names}, c, cpu)["top1"]
    cm, rows = res["confusion"], res["confusion"].sum(1)
    per = {n: (int(rows[i]), 100.0 * float(cm[i, i]) / rows[i] if rows[i] else None) for i, n in enumerate(names)}
    split = "its test split" if c["data"]["dataset"] == "fashion-mnist" else f"split {c['data']['val_split']}"
    return {"top1": res["top1"], "top5": res["top5"], "loss": res["loss"], "n": res["n"], "per_class": per,
            "tta_top1": tta_top1,
            "source": f"Measured by `botnet publish` with the published weights on the {res['n']} images of the "
                      f"run's validation data ({split}), with the preprocessing above and no test-time augmentation."}


# ----------------------------------------------------------------------------- detection
def _write_detector(model, meta: dict[str, Any], info: dict[str, Any], tmp: Path, run: Path) -> None:
    """config.json with the detector's full build options, label names and preprocessing, and the card."""
    from botnet.hub.card import detection_card

    kw = dict(meta["model_kwargs"])
    extra = meta.get("extra") or {}
    names = list(meta.get("class_names") or extra.get("class_names") or [])
    size = kw.get("canvas") or max(kw.get("min_size") or [800])
    t = model.transform
    pcfg = {"input_size": [3, int(size), int(size)], "mean": list(t.image_mean), "std": list(t.image_std),
            "num_classes": kw["num_classes"]}
    block = {"format": FORMAT, "task": "detection", "arch": meta["arch"], "model_kwargs": kw,
             "weights": info["which"], "run_config": info["config"], "botnet_version": info["botnet_version"],
             "label_to_cat_id": extra.get("label_to_cat_id")}
    config = {"architecture": meta["arch"], "num_classes": kw["num_classes"], "label_names": names,
              "pretrained_cfg": pcfg, "botnet": block}
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (tmp / CARD_NAME).write_text(detection_card(_detector_card(model, meta, info, run, tmp, kw, names)))


def _detector_card(model, meta, info, run: Path, tmp: Path, kw: dict, names: list[str]) -> dict[str, Any]:
    from botnet.detection.coco_eval import results_markdown
    from botnet.detection.evaluate import metrics_in_percent
    from botnet.models.profile import profile_model

    ev = _json(run / "eval.json")
    if ev.get("metrics"):
        md = results_markdown(metrics_in_percent(ev)).strip().splitlines()
        src = (f"COCO metrics (percent) from the run's final evaluation (`{Path(str(ev.get('checkpoint'))).name}`, "
               f"{ev.get('num_val_images', '?')} validation images, {ev.get('num_train_images', '?')} training "
               f"images).")
    else:
        md, src = [], f"No evaluation recorded in {run}/eval.json; measure it with `botnet detect eval {info['name']}`."
    bb = profile_model(kw["backbone"], img_size=kw.get("img_size"), num_classes=0, backbone_only=True,
                       **(kw.get("backbone_kwargs") or {}))
    cfg = info["config"] or {}
    data = cfg.get("data") or {}
    dataset = {"fashion-mosaic": "the generated fashion-mosaic set",
               "shards": f"COCO-format data as tar shards ({data.get('root')})"}.get(
        data.get("dataset"), f"COCO-format data ({data.get('train_ann')})")
    init = ((cfg.get("model") or {}).get("backbone_weights"))
    return dict(info, title=f"{kw['kind']} {kw['backbone']}-FPN on {data.get('dataset', 'COCO data')}",
                kind=kw["kind"], backbone=kw["backbone"], arch=meta["arch"],
                timm_name="(not a timm model)", class_names=names[1:] if names[:1] == ["__background__"] else names,
                model_args=json.dumps(kw), params=sum(p.numel() for p in model.parameters()),
                gmacs=f"backbone {bb.gmacs:.3f} at {bb.img_size[0]}x{bb.img_size[1]} px",
                dataset=dataset + (f", backbone initialised from {init}" if init else ""), metrics_md=md,
                metrics_source=src)
