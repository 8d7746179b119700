#!/usr/bin/env python3
"""Builds small random GIT checkpoints with Hugging Face transformers and records the reference
outputs that gitcap's tests compare against.

    .venv-ref/bin/python tests/make_fixtures.py

Writes tests/fixtures/models/<name>/ (laid out like a Hugging Face repository) and
tests/fixtures/reference/<name>.{json,safetensors}. Deterministic: the same seed gives the same files.
The weights are random, drawn with a large initializer_range so that the top-1 token wins by a clear
margin (the script checks that margin, so a parity test cannot pass by near-uniform luck).
"""
import json
import os
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (AutoImageProcessor, BertTokenizer, CLIPImageProcessor, GitConfig,
                          GitForCausalLM, GenerationConfig, VideoMAEImageProcessor)
from transformers.image_utils import load_image

ROOT = Path(__file__).resolve().parent
FIX = ROOT / "fixtures"
VOCAB = ROOT / "fixtures" / "vocab.txt"
IMAGES = ROOT / "images"

torch.manual_seed(0)
torch.set_num_threads(1)

MODELS = {
    # A captioning checkpoint shaped like git-*-coco: CLIP preprocessing, untied LM head, safetensors.
    "tiny-coco": dict(
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8),
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=64, tie_word_embeddings=False),
        processor="clip", weights="safetensors", init=0.6, seed=0,
    ),
    # A video checkpoint shaped like git-base-vatex: three frames with temporal embeddings,
    # VideoMAE preprocessing, tied LM head, weights in a PyTorch pickle with the legacy
    # `img_temperal_embedding` name and `position_ids` buffers, as the published files have.
    "tiny-vatex": dict(
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                    image_size=40, patch_size=8),
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, tie_word_embeddings=True, num_image_with_embedding=3),
        processor="videomae", weights="pytorch", init=0.6, vocab_only=True, seed=3,
    ),
}

CAPTION_IMAGES = ["chelsea.png", "rocket.jpg", "camera.png", "logo.png", "chelsea_exif_orientation6.jpg"]
PROMPT = "what is in the picture?"


def build(name, spec):
    out = FIX / "models" / name
    torch.manual_seed(spec["seed"])
    out.mkdir(parents=True, exist_ok=True)
    vision = dict(spec["vision"], initializer_range=spec["init"])
    config = GitConfig(vision_config=vision, initializer_range=spec["init"], **spec["text"])
    model = GitForCausalLM(config).eval()
    with torch.no_grad():
        # Random LayerNorm weights and biases (the default init is ones and zeros) so that a
        # swapped or missing LayerNorm cannot go unnoticed.
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.normal_(1.0, 0.3)
                mod.bias.normal_(0.0, 0.3)
        if spec["text"].get("num_image_with_embedding"):
            for p in model.git.img_temporal_embedding:
                p.normal_(0.0, 1.0)
        # Make [SEP] likely enough that some beams end early, so EOS handling is exercised.
        if model.output.bias is not None:
            model.output.bias[102] += 7.7
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=101, eos_token_id=102, pad_token_id=0).save_pretrained(out)
    tok = BertTokenizer(vocab=str(VOCAB))
    tok.save_pretrained(out)
    if spec["processor"] == "clip":
        size = vision["image_size"]
        proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    else:
        size = vision["image_size"]
        proc = VideoMAEImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                      resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc.save_pretrained(out)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if spec["weights"] == "safetensors":
        if config.tie_word_embeddings:
            state.pop("output.weight", None)
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    else:
        legacy = {}
        for k, v in state.items():
            legacy[k.replace("img_temporal_embedding", "img_temperal_embedding")] = v
        legacy["git.embeddings.position_ids"] = torch.arange(config.max_position_embeddings).unsqueeze(0)
        legacy["git.image_encoder.vision_model.embeddings.position_ids"] = torch.arange(
            (vision["image_size"] // vision["patch_size"]) ** 2 + 1).unsqueeze(0)
        torch.save(legacy, out / "pytorch_model.bin")
    if spec.get("vocab_only"):
        # Older checkpoints ship only vocab.txt: exercise that fallback.
        (out / "tokenizer.json").unlink()
        (out / "vocab.txt").write_bytes(VOCAB.read_bytes())
    return model, AutoImageProcessor.from_pretrained(out), tok


def margin(logits):
    top = torch.topk(logits, 2, dim=-1).values
    return float((top[..., 0] - top[..., 1]).min())


def record(name, model, proc, tok):
    tensors, cases = {}, []
    n_frames = model.config.num_image_with_embedding
    min_margin = float("inf")

    def pixels(files):
        imgs = [load_image(str(IMAGES / f)) for f in files]
        pv = proc(images=imgs, return_tensors="pt").pixel_values
        if n_frames and pv.ndim == 4:
            pv = pv.unsqueeze(0)
        return pv

    inputs = [[f] for f in CAPTION_IMAGES] if not n_frames else [CAPTION_IMAGES[:n_frames],
                                                                    CAPTION_IMAGES[1:n_frames + 1]]
    for i, files in enumerate(inputs):
        pv = pixels(files)
        key = f"case{i}"
        tensors[f"{key}.pixel_values"] = pv[0].contiguous()
        with torch.no_grad():
            enc = model.git.image_encoder
            if n_frames:
                feats = []
                for f in range(n_frames):
                    x = enc(pv[:, f]).last_hidden_state + model.git.img_temporal_embedding[f]
                    feats.append(x)
                feats = torch.cat(feats, 1)
            else:
                feats = enc(pv).last_hidden_state
            tensors[f"{key}.image_features"] = model.git.visual_projection(feats)[0].contiguous()

            case = {"key": key, "images": files}
            # Logits of one full forward pass over a fixed token sequence (no cache).
            ids = torch.tensor([[101, 1037, 4937, 2003]])
            # transformers returns logits for the image positions too; keep the text ones.
            logits = model(pixel_values=pv, input_ids=ids).logits[:, -ids.shape[1]:]
            min_margin = min(min_margin, margin(logits))
            if i == 0:
                tensors[f"{key}.logits"] = logits[0].contiguous()
            else:
                tensors[f"{key}.last_logits"] = logits[0, -1].contiguous()
            case["logits_input_ids"] = ids[0].tolist()

            runs = {
                "greedy": dict(max_new_tokens=20),
                "beam4": dict(max_new_tokens=20, num_beams=4, length_penalty=0.6),
                "beam3_lp1": dict(max_new_tokens=12, num_beams=3, length_penalty=1.0),
            }
            for run, kw in runs.items():
                gen = model.generate(pixel_values=pv, do_sample=False, **kw)
                case[run] = {"options": kw, "token_ids": gen[0].tolist(),
                             "text": tok.batch_decode(gen, skip_special_tokens=True)[0]}
            prompt_ids = [101] + tok(PROMPT, add_special_tokens=False).input_ids
            gen = model.generate(pixel_values=pv, input_ids=torch.tensor([prompt_ids]), max_new_tokens=10)
            case["prompt_greedy"] = {"prompt": PROMPT, "options": {"max_new_tokens": 10},
                                     "token_ids": gen[0].tolist(),
                                     "text": tok.batch_decode(gen[:, len(prompt_ids):], skip_special_tokens=True)[0]}
            # The same greedy caption computed without any cache: one full forward per token.
            seq = torch.tensor([[101]])
            for _ in range(20):
                lg = model(pixel_values=pv, input_ids=seq).logits[:, -1]
                min_margin = min(min_margin, margin(lg))
                nxt = lg.argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], 1)
                if nxt.item() == 102:
                    break
            case["greedy_nocache"] = {"token_ids": seq[0].tolist()}
        cases.append(case)

    ref = FIX / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    save_file(tensors, ref / f"{name}.safetensors")
    (ref / f"{name}.json").write_text(json.dumps({"model": name, "min_top1_margin": min_margin,
                                                  "cases": cases}, indent=1))
    print(name, "min top-1 margin", min_margin)
    for c in cases:
        same = c["greedy"]["token_ids"] == c["greedy_nocache"]["token_ids"]
        print(" ", c["images"], "greedy:", c["greedy"]["text"], "| beam4:", c["beam4"]["text"],
              "| cached==nocache:", same)
    if min_margin < 1e-3:
        sys.exit(f"{name}: top-1 margin {min_margin} is too small for a meaningful parity test")


if __name__ == "__main__":
    if not VOCAB.exists():
        sys.exit(f"missing {VOCAB}: copy shared/vocab/bert-base-uncased-vocab.txt there")
    for name, spec in MODELS.items():
        model, proc, tok = build(name, spec)
        record(name, model, proc, tok)
