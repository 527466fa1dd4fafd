"""What the bad-input tests share: run a command in-process, check its one-line error, fingerprint
a folder, make a small image folder or COCO set, leave what a killed command leaves. Importable from any test (pytest puts tests/ on sys.path)."""
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from botnet.cli import main


def run(capsys, args):
    """``botnet ARGS`` in-process: (exit code, stdout, stderr); argparse's exit is caught too."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles, log_prefixes=()):
    """Exit code 2, no traceback, one ``error:`` line holding every needle (lines starting with one of
    ``log_prefixes`` are log lines the command printed before it stopped)."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(tuple(log_prefixes))]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


def tree(root):
    """{relative path: sha256 (files), 'dir' or 'link -> target'} of everything under ``root``."""
    out = {}
    for top, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(top, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link -> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def image_folder(root: Path, classes=("a", "b"), per_class: int = 8) -> Path:
    """ROOT/{train,val}/CLASS/*.png with ``per_class`` random 28x28 images per class."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(d / f"{i}.png")
    return root


TINY_COCO_CATEGORIES = [{"id": 3, "name": "red", "supercategory": "box"}, {"id": 7, "name": "green",
                        "supercategory": "box"}, {"id": 11, "name": "blue", "supercategory": "box"}]


def tiny_coco(root: Path, n_train: int = 12, n_val: int = 4, height: int = 48, width: int = 64) -> Path:
    """ROOT/{train,val}/*.png (the second image a .jpg) and ROOT/instances_{train,val}.json: categories 3, 7 and
    11; each image 1-3 coloured rectangles on noise, whose masks are in turn a polygon, an uncompressed RLE and
    a compressed RLE string; the third image's first annotation is a crowd, each split's last image has none."""
    import json

    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    colour = {3: (220, 40, 40), 7: (40, 220, 40), 11: (40, 40, 220)}
    image_id, ann_id = 100, 1
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True)
        images, anns = [], []
        for k in range(n):
            px = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            name = f"{split}{k:03d}.{'jpg' if k == 1 else 'png'}"
            for j in range(0 if k == n - 1 else 1 + k % 3):
                w, h = (int(v) for v in rng.integers(10, 24, 2))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                cat = TINY_COCO_CATEGORIES[(k + j) % 3]["id"]
                px[y:y + h, x:x + w] = colour[cat]
                m = np.zeros((height, width), np.uint8, order="F")
                m[y:y + h, x:x + w] = 1
                style = (k + j) % 3
                if style == 0:
                    seg = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                elif style == 1:  # run lengths of the column-major mask, starting with zeros
                    flat = m.flatten(order="F")
                    edges = np.flatnonzero(np.diff(flat)) + 1
                    seg = {"size": [height, width],
                           "counts": np.diff(np.r_[0, edges, flat.size]).tolist() if flat[0] == 0 else
                           [0, *np.diff(np.r_[0, edges, flat.size]).tolist()]}
                else:
                    seg = {"size": [height, width], "counts": mask_utils.encode(m)["counts"].decode("ascii")}
                anns.append({"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                             "area": w * h, "iscrowd": int(k == 2 and j == 0), "segmentation": seg})
                ann_id += 1
            Image.fromarray(px).save(root / split / name, quality=95)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            image_id += 1
        (root / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": TINY_COCO_CATEGORIES}))
    return root


def rewrite_safetensors(path, meta=None, skeleton=None, tensors=None):
    """Damage a saved file in place: ``meta(dict)`` edits its metadata, ``skeleton(tree)`` a training
    state's JSON skeleton (may return a replacement, or a raw string), ``tensors(dict)`` its tensors."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        md, ts = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if meta:
        md = meta(md) or md
    if skeleton:
        sk = json.loads(md["skeleton"])
        sk = skeleton(sk) or sk
        md["skeleton"] = sk if isinstance(sk, str) else json.dumps(sk)
    if tensors:
        ts = tensors(ts)
    save_file(ts, str(path), metadata=md)


def set_extra(key, value):
    """A ``meta`` edit for :func:`rewrite_safetensors`: ``extra[key] = value`` in a weights file."""
    import json

    def fn(md):
        ex = json.loads(md["extra"])
        ex[key] = value
        md["extra"] = json.dumps(ex)
    return fn


def table_failures(capsys, rows, check=assert_one_line_error):
    """Run every ``(args, needles)`` row; the rows whose error ``check`` refuses, one line each (all
    rows run, so one failing test lists every broken row)."""
    failures = []
    for args, needles in rows:
        rc, _, err = run(capsys, args)
        try:
            check(rc, err, *needles)
        except AssertionError as e:
            failures.append(f"botnet {' '.join(map(str, args))[:160]}: rc={rc} err={err.strip()[-300:]!r} ({e})")
    return failures


_HOLD_TEMP = """
import sys, time
from botnet.io.temp_beside import TempBeside
claim = TempBeside(sys.argv[1], folder=sys.argv[2] == "folder", suffix=sys.argv[3])
if claim.path.is_dir():
    (claim.path / "part-000.tar").write_bytes(b"x" * 1000)
else:
    claim.path.write_bytes(b"x" * 1000)
print(claim.path, flush=True)
time.sleep(600)
"""


def hold_temp(dest: Path, kind: str, suffix: str):
    """A process holding a temporary for ``dest``, as a command does while it writes: (process, path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_TEMP, str(dest), kind, suffix], stdout=subprocess.PIPE, env=env,
                            text=True)
    return proc, Path(proc.stdout.readline().strip())


def abandoned_temp(dest: Path, kind: str = "folder", suffix: str = ".tmp") -> Path:
    """The temporary a command killed (SIGKILL) while writing ``dest`` leaves beside it."""
    proc, path = hold_temp(dest, kind, suffix)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return path
