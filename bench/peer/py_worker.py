#!/usr/bin/env python3
"""One timed engine held loaded for bench/peer/run.mjs, which alternates engines round by round.

    .venv-ref/bin/python bench/peer/py_worker.py ort MODEL.onnx PIXELS.f32 THREADS
    .venv-ref/bin/python bench/peer/py_worker.py transformers CHECKPOINT_DIR PIXELS.f32 THREADS

Protocol (one JSON object per line on stdout): after loading, {"ready": true, "info": {...}};
then for each line "run" on stdin, one image encoding, {"ms": ...}; "quit" or end of input exits.
Logs go to stderr.
"""
import json
import sys
import time

import numpy as np

engine, model_path, pixels_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pixels = np.fromfile(pixels_path, dtype="<f4").reshape(1, 3, 224, 224)


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


t0 = time.perf_counter()
if engine == "ort":
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    feeds = {"pixel_values": pixels}
    info = {"onnxruntime": ort.__version__, "providers": sess.get_providers()}

    def encode():
        return sess.run(None, feeds)[0]
elif engine == "transformers":
    import torch
    import transformers
    from transformers import GitForCausalLM

    torch.set_num_threads(threads)
    model = GitForCausalLM.from_pretrained(model_path).eval()
    pv = torch.from_numpy(pixels)
    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
            "attn_implementation": model.config._attn_implementation}

    def encode():
        # What bench/transformers_bench.py times: the image encoder and the visual projection.
        with torch.inference_mode():
            return model.git.visual_projection(model.git.image_encoder(pv).last_hidden_state).numpy()
else:
    sys.exit(f"unknown engine {engine}")
info["load_ms"] = (time.perf_counter() - t0) * 1e3
info["threads"] = threads
say({"ready": True, "info": info})

for line in sys.stdin:
    cmd = line.strip()
    if cmd == "quit":
        break
    if cmd != "run":
        say({"error": f"unknown command {cmd!r}"})
        continue
    t = time.perf_counter()
    y = encode()
    ms = (time.perf_counter() - t) * 1e3
    say({"ms": ms, "shape": list(y.shape)})
