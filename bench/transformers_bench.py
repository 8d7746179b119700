#!/usr/bin/env python3
"""Times transformers' GitForCausalLM on CPU for the figures gitcap is compared against:
image encoding, per-token decode, a whole 20-token greedy caption and a 4-beam caption.

    .venv-ref/bin/python bench/transformers_bench.py MODEL_DIR IMAGE THREADS REPEATS
Prints one JSON object.
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoImageProcessor, GitForCausalLM
from transformers.image_utils import load_image

model_dir, image, threads, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = GitForCausalLM.from_pretrained(model_dir).eval()
proc = AutoImageProcessor.from_pretrained(model_dir)
pv = proc(images=load_image(image), return_tensors="pt").pixel_values


def timed(fn):
    """Median of `repeats` timed calls after one untimed call: the first call of each kind pays
    one-off costs (the first encode here took 3.2 s against 1.6 s warm on an AMD EPYC), which in
    a median of two counted half, and made the per-token figure negative."""
    times = []
    with torch.inference_mode():
        out = fn()
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.inference_mode():
            out = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


encode_ms, _ = timed(lambda: model.git.visual_projection(model.git.image_encoder(pv).last_hidden_state))
one_ms, _ = timed(lambda: model.generate(pixel_values=pv, max_new_tokens=1, do_sample=False))
greedy_ms, greedy = timed(lambda: model.generate(pixel_values=pv, max_new_tokens=20, do_sample=False))
beam_ms, beam = timed(lambda: model.generate(pixel_values=pv, max_new_tokens=20, num_beams=4, do_sample=False))
n = greedy.shape[1] - 1
print(json.dumps({
    "threads": threads, "repeats": repeats, "torch": torch.__version__,
    "encode_ms": encode_ms,
    "per_token_ms": (greedy_ms - one_ms) / max(n - 1, 1),
    "greedy_ms": greedy_ms, "greedy_tokens": n, "greedy_ids": greedy[0].tolist(),
    "beam4_ms": beam_ms, "beam4_tokens": beam.shape[1] - 1, "beam4_ids": beam[0].tolist(),
}))
