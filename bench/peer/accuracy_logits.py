#!/usr/bin/env python3
"""How far ONNX Runtime's int8 ("q8") GIT is from its fp32 one in the final logits, the figure
gitcap's q8_0 is held to (issue 12's accuracy rule): for every image, the fp32 pipeline's 20-token
greedy caption is fed to both pipelines (encoder -> decoder prefix -> decoder steps, all ONNX), and
the logits after the last token are compared, ||l_int8 - l_fp32|| / ||l_fp32||, with the image
features' error and whether the argmax agrees. This is the metric of gitcap's
`examples/quant_error.rs` (the f32 model's caption fed to both models, final-step logits).

    .venv-ref/bin/python bench/peer/accuracy_logits.py [CHECKPOINT_DIR] [PEER_DIR] [IMAGE_DIR] [OUT.json]

Needs PEER_DIR/encoder-{fp32,int8}.onnx (prepare.py) and decoder-{prefix,step}.onnx (decoder.py);
makes decoder-{prefix,step}-int8.onnx with onnxruntime.quantization.quantize_dynamic (QInt8
weights, what prepare.py does for the encoder and transformers.js ships as "q8") when missing.
Writes bench/peer/results/accuracy-logits-<date>-<cpu>.json.
"""
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import AutoConfig, AutoImageProcessor
from transformers.image_utils import load_image

checkpoint = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/git-large-random")
peer = Path(sys.argv[2] if len(sys.argv) > 2 else "bench-out/peer")
default_images = Path("/work/shared/images") if Path("/work/shared/images").is_dir() else Path("tests/images")
image_dir = Path(sys.argv[3] if len(sys.argv) > 3 else default_images)
TOKENS = 20

for name in ("decoder-prefix", "decoder-step"):
    src, dst = peer / f"{name}.onnx", peer / f"{name}-int8.onnx"
    if not src.exists():
        raise SystemExit(f"{src} is missing: run bench/peer/decoder.py first")
    if not dst.exists():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def session(path):
    return ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])


FILES = {
    "fp32": ("encoder-fp32", "decoder-prefix", "decoder-step"),
    "int8": ("encoder-int8", "decoder-prefix-int8", "decoder-step-int8"),
}
pipelines = {kind: [session(peer / f"{name}.onnx") for name in names] for kind, names in FILES.items()}

cfg = AutoConfig.from_pretrained(checkpoint)
layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
head_dim = cfg.hidden_size // heads
bos = cfg.bos_token_id if cfg.bos_token_id is not None else 101


def run(kind, pixels, ids=None):
    """Features, the ids fed (greedy when `ids` is None) and the logits after the last of them."""
    enc, pre, step = pipelines[kind]
    feats = enc.run(None, {"pixel_values": pixels})[0]
    ik, iv = pre.run(None, {"image_features": feats})
    pk = np.zeros((layers, 1, heads, 0, head_dim), np.float32)
    pv = pk
    fed = [bos]
    for pos in range(TOKENS + 1):
        logits, pk, pv = step.run(None, {
            "input_ids": np.array([[fed[-1]]], np.int64), "position": np.array([pos], np.int64),
            "image_k": ik, "image_v": iv, "past_k": pk, "past_v": pv})
        if pos == TOKENS:
            break
        fed.append(int(logits[0].argmax()) if ids is None else ids[pos + 1])
    return feats, fed, logits[0]


def rel_err(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


proc = AutoImageProcessor.from_pretrained(checkpoint)
rows = []
for path in sorted(p for p in image_dir.iterdir() if p.is_file()):
    try:
        img = load_image(str(path))
    except Exception as e:  # licences, notes
        print(f"skip {path.name}: {e}", file=sys.stderr)
        continue
    pixels = proc(images=img, return_tensors="np").pixel_values.astype(np.float32)
    f_feats, ids, f_logits = run("fp32", pixels)
    q_feats, _, q_logits = run("int8", pixels, ids)
    row = {"image": path.name, "features_rel_err": rel_err(q_feats, f_feats),
           "logits_rel_err": rel_err(q_logits, f_logits),
           "same_argmax": int(q_logits.argmax()) == int(f_logits.argmax()), "fp32_ids": ids}
    print(json.dumps(row))
    rows.append(row)

lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
cpu = re.search(r"^Model name:\s*(.*)$", lscpu, re.M).group(1).strip()
fe = [r["features_rel_err"] for r in rows]
le = [r["logits_rel_err"] for r in rows]
report = {
    "what": "ONNX Runtime int8 (quantize_dynamic QInt8: encoder, decoder prefix and step) vs fp32, "
            "the fp32 20-token greedy caption fed to both, final-step logits",
    "checkpoint": str(checkpoint), "images": str(image_dir), "onnxruntime": ort.__version__, "cpu": cpu,
    "features_rel_err_mean": sum(fe) / len(fe), "features_rel_err_max": max(fe),
    "logits_rel_err_mean": sum(le) / len(le), "logits_rel_err_max": max(le),
    "same_argmax": sum(r["same_argmax"] for r in rows), "images_measured": len(rows), "rows": rows,
}
now = datetime.datetime.now(datetime.timezone.utc)
report["date"] = now.isoformat(timespec="seconds")
slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", cpu.lower())).strip("-")
out = Path(sys.argv[4]) if len(sys.argv) > 4 else Path("bench/peer/results") / f"accuracy-logits-{now:%Y-%m-%dT%H%M}-{slug}.json"
out.write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
print(f"wrote {out}")
