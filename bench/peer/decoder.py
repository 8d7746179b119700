#!/usr/bin/env python3
"""GIT's text decoder in ONNX Runtime with a key/value cache: a 20-token greedy caption timed
natively, beside the image encoder from prepare.py.

    .venv-ref/bin/python bench/peer/decoder.py [CHECKPOINT_DIR] [PEER_DIR] [IMAGE] [--threads 1,2] [--repeats 3]

transformers' GitForCausalLM keeps its cache in a Python Cache object and rebuilds GIT's
[image | text] mask every step, so it has no ready-made export with the cache as graph inputs
and outputs (and Optimum has no GIT export). So this script exports two small graphs built from
the checkpoint's own GitForCausalLM modules (the same Linear/LayerNorm/Embedding weights, the
same post-LayerNorm BERT layer arithmetic), split where GIT's mask allows:
  - decoder-prefix.onnx: image features (1, 257, 768) -> every layer's keys and values of the
    image rows (image rows attend to image rows only, so these depend on the image alone);
  - decoder-step.onnx: one token id and its text position, the image keys/values and the text
    keys/values so far (dynamic length, 0 at the start) -> logits and the text keys/values with
    this token appended.
It then checks that ONNX Runtime's greedy ids equal transformers' generate() (max_new_tokens=20,
greedy) on the same image before it reports any time, and writes the figures to
bench/peer/results/decoder-<date>-<cpu>.json.
"""
import argparse
import datetime
import json
import re
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import AutoImageProcessor, GitForCausalLM
from transformers.image_utils import load_image

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint", nargs="?", default="bench-out/git-large-random")
ap.add_argument("peer", nargs="?", default="bench-out/peer")
ap.add_argument("image", nargs="?", default="tests/images/chelsea.png")
ap.add_argument("--threads", default="1,2")
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--tokens", type=int, default=20)
args = ap.parse_args()
peer = Path(args.peer)

model = GitForCausalLM.from_pretrained(args.checkpoint, attn_implementation="eager").eval()
# Prefix and Step below use the model's modules without registering them as their own
# submodules, so the tracer sees the weights as constants: they must not require grad.
model.requires_grad_(False)
git, cfg = model.git, model.config
layers = git.encoder.layer
heads = cfg.num_attention_heads
head_dim = cfg.hidden_size // heads


def split_heads(x):  # (1, n, hidden) -> (1, heads, n, head_dim)
    return x.view(1, x.shape[1], heads, head_dim).transpose(1, 2)


def layer_rest(layer, x, ctx):
    """Everything after the attention product in a GitLayer (BERT, post-LayerNorm)."""
    ctx = ctx.transpose(1, 2).reshape(1, -1, cfg.hidden_size)
    att = layer.attention.output
    x = att.LayerNorm(att.dense(ctx) + x)
    inter = layer.intermediate
    out = layer.output
    return out.LayerNorm(out.dense(inter.intermediate_act_fn(inter.dense(x))) + x)


def attend(q, k, v):
    w = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, dim=-1)
    return w @ v


class Prefix(torch.nn.Module):
    def forward(self, features):
        x, ks, vs = features, [], []
        for layer in layers:
            s = layer.attention.self
            q, k, v = split_heads(s.query(x)), split_heads(s.key(x)), split_heads(s.value(x))
            ks.append(k)
            vs.append(v)
            x = layer_rest(layer, x, attend(q, k, v))
        return torch.stack(ks), torch.stack(vs)


class Step(torch.nn.Module):
    def forward(self, input_ids, position, image_k, image_v, past_k, past_v):
        e = git.embeddings
        x = e.LayerNorm(e.word_embeddings(input_ids) + e.position_embeddings(position).unsqueeze(0))
        new_k, new_v = [], []
        for i, layer in enumerate(layers):
            s = layer.attention.self
            q, k, v = split_heads(s.query(x)), split_heads(s.key(x)), split_heads(s.value(x))
            tk, tv = torch.cat([past_k[i], k], dim=2), torch.cat([past_v[i], v], dim=2)
            new_k.append(tk)
            new_v.append(tv)
            # One new token attends to every image row and all text so far: no mask needed.
            ctx = attend(q, torch.cat([image_k[i], tk], dim=2), torch.cat([image_v[i], tv], dim=2))
            x = layer_rest(layer, x, ctx)
        return model.output(x[:, -1]), torch.stack(new_k), torch.stack(new_v)


proc = AutoImageProcessor.from_pretrained(args.checkpoint)
pv = proc(images=load_image(args.image), return_tensors="pt").pixel_values
with torch.no_grad():
    features = git.visual_projection(git.image_encoder(pv).last_hidden_state)
    want = model.generate(pixel_values=pv, max_new_tokens=args.tokens, do_sample=False)[0].tolist()
n_img = features.shape[1]
L = len(layers)

prefix_path, step_path = peer / "decoder-prefix.onnx", peer / "decoder-step.onnx"
t0 = time.perf_counter()
with torch.no_grad():
    if not prefix_path.exists():
        torch.onnx.export(Prefix(), (features,), str(prefix_path), input_names=["image_features"],
                          output_names=["image_k", "image_v"], opset_version=17, dynamo=False)
    if not step_path.exists():
        ik, iv = Prefix()(features)
        past = torch.zeros(L, 1, heads, 2, head_dim)
        torch.onnx.export(
            Step(), (torch.tensor([[101]]), torch.tensor([2]), ik, iv, past, past), str(step_path),
            input_names=["input_ids", "position", "image_k", "image_v", "past_k", "past_v"],
            output_names=["logits", "present_k", "present_v"],
            dynamic_axes={"past_k": {3: "text"}, "past_v": {3: "text"},
                          "present_k": {3: "text_plus_1"}, "present_v": {3: "text_plus_1"}},
            opset_version=17, dynamo=False)
export_s = time.perf_counter() - t0


def session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def caption(enc, pre, step, pixels):
    """Greedy ids ([CLS] + tokens, EOS ignored so every run does the same work) and stage times."""
    t0 = time.perf_counter()
    feats = enc.run(None, {"pixel_values": pixels})[0]
    t1 = time.perf_counter()
    ik, iv = pre.run(None, {"image_features": feats})
    t2 = time.perf_counter()
    pk = np.zeros((L, 1, heads, 0, head_dim), np.float32)
    pvv = pk
    ids = [cfg.bos_token_id if cfg.bos_token_id is not None else 101]
    for pos in range(args.tokens):
        logits, pk, pvv = step.run(None, {
            "input_ids": np.array([[ids[-1]]], np.int64), "position": np.array([pos], np.int64),
            "image_k": ik, "image_v": iv, "past_k": pk, "past_v": pvv})
        ids.append(int(logits[0].argmax()))
    t3 = time.perf_counter()
    return ids, {"encode_ms": (t1 - t0) * 1e3, "prefix_ms": (t2 - t1) * 1e3,
                 "decode_ms": (t3 - t2) * 1e3, "per_token_ms": (t3 - t2) * 1e3 / args.tokens,
                 "total_ms": (t3 - t0) * 1e3}


pixels = pv.numpy()
report = {"checkpoint": args.checkpoint, "image": args.image, "tokens": args.tokens, "onnxruntime": ort.__version__,
          "export_s": export_s, "transformers_ids": want, "by_threads": []}
for threads in [int(t) for t in args.threads.split(",")]:
    enc, pre, step = (session(peer / "encoder-fp32.onnx", threads), session(prefix_path, threads),
                      session(step_path, threads))
    ids, _ = caption(enc, pre, step, pixels)  # warm-up, and the check
    # generate() stops at EOS; compare the ids it produced.
    same = ids[: len(want)] == want
    print(json.dumps({"threads": threads, "ort_ids": ids, "same_as_transformers": same}))
    if not same:
        raise SystemExit(f"ONNX Runtime's greedy ids differ from transformers': {ids} vs {want}")
    runs = [caption(enc, pre, step, pixels)[1] for _ in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    entry = {"threads": threads, "same_ids_as_transformers": same, "median": med, "runs": runs}
    print(json.dumps(entry))
    report["by_threads"].append(entry)

lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
cpu = re.search(r"^Model name:\s*(.*)$", lscpu, re.M).group(1).strip()
flags = re.search(r"^Flags:\s*(.*)$", lscpu, re.M).group(1).split()
report["cpu"] = {"model": cpu, **{f: f in flags for f in ("avx512f", "avx512_vnni", "amx_int8")}}
now = datetime.datetime.now(datetime.timezone.utc)
report["date"] = now.isoformat(timespec="seconds")
slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", cpu.lower())).strip("-")
out = Path("bench/peer/results") / f"decoder-{now:%Y-%m-%dT%H%M}-{slug}.json"
out.write_text(json.dumps(report, indent=2) + "\n")
print(f"wrote {out}")
