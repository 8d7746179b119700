#!/usr/bin/env python3
"""How far ONNX Runtime's int8 ("q8") image encoder is from its fp32 one on the same checkpoint:
for every image in IMAGE_DIR, the relative error ||x_int8 - x_fp32|| / ||x_fp32|| of the projected
image features (1 x 257 x 768), then the mean and max. Images are read and preprocessed the way
transformers does (load_image: EXIF orientation, conversion to RGB; the checkpoint's processor).

    .venv-ref/bin/python bench/peer/accuracy.py [PEER_DIR] [CHECKPOINT_DIR] [IMAGE_DIR] [OUT.json]

Defaults: bench-out/peer (encoder-{fp32,int8}.onnx from prepare.py), bench-out/git-large-random,
/work/shared/images (else tests/images), bench/peer/results/accuracy-<date>-<cpu>.json.
Each image's features are also saved as PEER_DIR/features/{fp32,int8}/<image>.npy, the format
bench/peer/rel_err.py compares (with gitcap's dumps, for instance).
"""
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from transformers import AutoImageProcessor
from transformers.image_utils import load_image

peer = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/peer")
checkpoint = Path(sys.argv[2] if len(sys.argv) > 2 else "bench-out/git-large-random")
default_images = Path("/work/shared/images") if Path("/work/shared/images").is_dir() else Path("tests/images")
image_dir = Path(sys.argv[3] if len(sys.argv) > 3 else default_images)


def rel_err(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def cpu_model():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    m = re.search(r"^Model name:\s*(.*)$", out, re.M)
    return m.group(1).strip() if m else "unknown"


proc = AutoImageProcessor.from_pretrained(checkpoint)
opts = ort.SessionOptions()
sessions = {t: ort.InferenceSession(str(peer / f"encoder-{t}.onnx"), opts, providers=["CPUExecutionProvider"])
            for t in ("fp32", "int8")}
rows = []
for path in sorted(p for p in image_dir.iterdir() if p.is_file()):
    try:
        img = load_image(str(path))
    except Exception as e:  # not an image
        print(f"skipping {path.name}: {e}", file=sys.stderr)
        continue
    pv = proc(images=img, return_tensors="np").pixel_values.astype(np.float32)
    feats = {}
    for t, sess in sessions.items():
        feats[t] = sess.run(None, {"pixel_values": pv})[0]
        (peer / "features" / t).mkdir(parents=True, exist_ok=True)
        np.save(peer / "features" / t / f"{path.name}.npy", feats[t])
    row = {"image": path.name, "size": list(img.size), "features_rel_err": rel_err(feats["int8"], feats["fp32"])}
    print(json.dumps(row), file=sys.stderr)
    rows.append(row)

errs = [r["features_rel_err"] for r in rows]
now = datetime.datetime.now(datetime.timezone.utc)
cpu = cpu_model()
report = {
    "what": "ONNX Runtime int8 (quantize_dynamic, QInt8 weights) vs fp32 image features, ||int8 - fp32|| / ||fp32||",
    "date": now.isoformat(timespec="seconds"), "cpu": cpu, "onnxruntime": ort.__version__,
    "checkpoint": str(checkpoint), "image_dir": str(image_dir),
    "images": rows, "mean": float(np.mean(errs)), "max": float(np.max(errs)),
}
slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", cpu.lower())).strip("-")
out = Path(sys.argv[4]) if len(sys.argv) > 4 else Path("bench/peer/results") / f"accuracy-{now:%Y-%m-%dT%H%M}-{slug}.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps({"mean": report["mean"], "max": report["max"], "images": len(rows), "wrote": str(out)}))
