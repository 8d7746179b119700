#!/usr/bin/env python3
"""Exports GIT's image encoder (CLIP ViT-L/14 + visual projection, what GitModel computes as
`visual_projection(image_encoder(pixel_values).last_hidden_state)`) to ONNX in fp32, makes the int8
copy transformers.js ships as "q8" (onnxruntime.quantization.quantize_dynamic, QInt8 weights), and
writes the inputs the timed engines share. Skips what already exists.

    .venv-ref/bin/python bench/peer/prepare.py [CHECKPOINT_DIR] [OUT_DIR] [IMAGE]

Writes under OUT_DIR (default bench-out/peer, gitignored):
    encoder-fp32.onnx, encoder-int8.onnx      the two models (one file each, < 2 GB)
    pixels.f32                                IMAGE preprocessed by the checkpoint's processor,
                                              1x3x224x224 little-endian float32
    features-{fp32,int8}.f32                  ONNX Runtime's output for pixels.f32 (1x257x768),
                                              so the browser run can check it computes the same
    prepare.json                              versions, sizes and the export checks
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from onnxruntime.quantization import QuantType, quantize_dynamic
from PIL import Image
from transformers import AutoImageProcessor, GitForCausalLM

checkpoint = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/git-large-random")
out = Path(sys.argv[2] if len(sys.argv) > 2 else "bench-out/peer")
image = Path(sys.argv[3] if len(sys.argv) > 3 else "tests/images/chelsea.png")
out.mkdir(parents=True, exist_ok=True)
fp32_path, int8_path = out / "encoder-fp32.onnx", out / "encoder-int8.onnx"


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class ImageEncoder(torch.nn.Module):
    """pixel_values (1, 3, 224, 224) -> projected image features (1, 257, 768)."""

    def __init__(self, git):
        super().__init__()
        self.image_encoder = git.image_encoder
        self.visual_projection = git.visual_projection

    def forward(self, pixel_values):
        return self.visual_projection(self.image_encoder(pixel_values).last_hidden_state)


proc = AutoImageProcessor.from_pretrained(checkpoint)
pixels = proc(images=Image.open(image).convert("RGB"), return_tensors="pt").pixel_values
pixels.numpy().astype("<f4").tofile(out / "pixels.f32")
report = {"checkpoint": str(checkpoint), "image": str(image), "torch": torch.__version__,
          "transformers": transformers.__version__, "onnx": onnx.__version__,
          "onnxruntime": ort.__version__, "pixel_shape": list(pixels.shape)}

if not fp32_path.exists():
    # Eager attention: the plain MatMul/Softmax graph an exporter of this model usually produces.
    model = GitForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    encoder = ImageEncoder(model.git).eval()
    t = time.perf_counter()
    tmp = out / "encoder-fp32.tmp.onnx"
    with torch.no_grad():
        want = encoder(pixels).numpy()
        # The TorchScript exporter: one self-contained file for a 1.2 GB graph, which ONNX Runtime
        # Web can take as one buffer (the dynamo exporter writes external data by default).
        torch.onnx.export(encoder, (pixels,), str(tmp), input_names=["pixel_values"],
                          output_names=["image_features"], opset_version=17, dynamo=False)
    tmp.rename(fp32_path)
    report["export_s"] = time.perf_counter() - t
    np.save(out / "features-torch.npy", want)
    del model, encoder

if not int8_path.exists():
    t = time.perf_counter()
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    report["quantize_s"] = time.perf_counter() - t

feeds = {"pixel_values": pixels.numpy()}
for name, path in (("fp32", fp32_path), ("int8", int8_path)):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    got.astype("<f4").tofile(out / f"features-{name}.f32")
    report[f"{name}_bytes"] = path.stat().st_size
    report[f"{name}_output_shape"] = list(got.shape)
    if (out / "features-torch.npy").exists():
        report[f"{name}_rel_err_vs_torch"] = rel_err(got, np.load(out / "features-torch.npy"))
    del sess
ops = sorted({n.op_type for n in onnx.load(str(int8_path), load_external_data=False).graph.node})
report["int8_ops"] = ops
(out / "prepare.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
