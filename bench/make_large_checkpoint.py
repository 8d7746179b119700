#!/usr/bin/env python3
"""Builds a full-size git-large-shaped GIT checkpoint with random weights (394 M parameters,
about 1.6 GB in f32) for benchmarks. Speed does not depend on the weights' values, so this stands
in for microsoft/git-large-r-coco, which cannot be downloaded here. Never commit the output.

    .venv-ref/bin/python bench/make_large_checkpoint.py bench-out/git-large-random
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertTokenizer, CLIPImageProcessor, GenerationConfig, GitConfig, GitForCausalLM

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/git-large-random")
out.mkdir(parents=True, exist_ok=True)
vocab = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vocab.txt"
torch.manual_seed(0)
# The architecture of microsoft/git-large-r-coco (ViT-L/14 at 224 px, 6-layer BERT-base decoder).
config = GitConfig(
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=224, patch_size=14, layer_norm_eps=1e-5),
    hidden_size=768, intermediate_size=3072, num_hidden_layers=6, num_attention_heads=12,
    max_position_embeddings=1024, vocab_size=30522, tie_word_embeddings=False,
)
model = GitForCausalLM(config).eval()
print("parameters:", sum(p.numel() for p in model.parameters()))
config.save_pretrained(out)
GenerationConfig(bos_token_id=101, eos_token_id=102, pad_token_id=0).save_pretrained(out)
BertTokenizer(vocab=str(vocab)).save_pretrained(out)
CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)
state = {k: v.contiguous() for k, v in model.state_dict().items()}
save_file(state, out / "model.safetensors", metadata={"format": "pt"})
print("wrote", out)
