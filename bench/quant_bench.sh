#!/usr/bin/env bash
# Quantized GGUF models against f32: file size, accuracy, caption time and peak memory.
# Figures go in bench/README-quant.md.
#
#   bench/quant_bench.sh [CHECKPOINT_DIR] [IMAGE_DIR] [OUT_DIR]
#
# CHECKPOINT_DIR defaults to bench-out/git-large-random (bench/make_large_checkpoint.py), IMAGE_DIR
# to ../shared/images, OUT_DIR to bench-out/quant. Runs one heavy step at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

CKPT=${1:-bench-out/git-large-random}
IMAGES=${2:-../shared/images}
OUT=${3:-bench-out/quant}
TYPES=(q8_0 q4k f16)
mkdir -p "$OUT"

cargo build --release --features native --bin gitcap --example quant_error
BIN=target/release/gitcap
EX=target/release/examples/quant_error

peak_mb() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.1f", s}' "$1"; }

echo "== quantize"
for t in "${TYPES[@]}"; do
  /usr/bin/time -v "$BIN" quantize --model "$CKPT" --out "$OUT/model-$t.gguf" --type "$t" --force --quiet \
    2> "$OUT/quantize-$t.log"
  grep -E '^(wrote|tensors|[0-9]+ matri)' "$OUT/quantize-$t.log" || true
  echo "  quantize $t: $(wall_s "$OUT/quantize-$t.log") s, peak $(peak_mb "$OUT/quantize-$t.log") MB"
done

echo "== accuracy (relative error against f32)"
ggufs=()
for t in "${TYPES[@]}"; do ggufs+=("$OUT/model-$t.gguf"); done
"$EX" errors "$CKPT" "$IMAGES" "${ggufs[@]}" > "$OUT/errors.jsonl" 2> "$OUT/errors.log"

echo "== caption time and peak memory (20 greedy tokens per image, EOS ignored)"
models=("$CKPT")
for t in "${TYPES[@]}"; do models+=("$OUT/model-$t.gguf"); done
for m in "${models[@]}"; do
  name=$(basename "$m" .gguf)
  /usr/bin/time -v "$EX" time "$m" "$IMAGES" 20 > "$OUT/time-$name.json" 2> "$OUT/time-$name.log"
  echo "  $name: $(cat "$OUT/time-$name.json"), peak $(peak_mb "$OUT/time-$name.log") MB"
  # The CLI end to end (load + every image, captions stop at EOS).
  /usr/bin/time -v "$BIN" caption --model "$m" --max-new-tokens 20 "$IMAGES"/* \
    > "$OUT/cli-$name.txt" 2> "$OUT/cli-$name.log" || true
  echo "  $name: gitcap caption over all images $(wall_s "$OUT/cli-$name.log") s, peak $(peak_mb "$OUT/cli-$name.log") MB"
done

python3 - "$CKPT" "$OUT" "${TYPES[@]}" <<'EOF'
import json, os, re, sys
ckpt, out, types = sys.argv[1], sys.argv[2], sys.argv[3:]
def peak(log):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(log).read())
    return int(m.group(1)) / 1024 if m else float("nan")
errors = {}
for line in open(os.path.join(out, "errors.jsonl")):
    r = json.loads(line)
    if r.get("summary"):
        errors[os.path.basename(r["model"])[len("model-"):-len(".gguf")]] = r
f32_bytes = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt) if f.endswith(".safetensors"))
rows = [("f32", f32_bytes, None, "time-" + os.path.basename(ckpt.rstrip("/")))]
rows += [(t, os.path.getsize(os.path.join(out, f"model-{t}.gguf")), errors.get(t), f"time-model-{t}") for t in types]
print()
print("| type | file | image features rel. err (mean / max) | final-step logits rel. err (mean / max) | same final argmax | load | encode | 20 tokens | caption (encode + 20 tokens) | peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|")
for t, size, e, tname in rows:
    tm = json.load(open(os.path.join(out, tname + ".json")))
    err = (f"{100*e['features_rel_err_mean']:.2f}% / {100*e['features_rel_err_max']:.2f}% | "
           f"{100*e['logits_rel_err_mean']:.2f}% / {100*e['logits_rel_err_max']:.2f}% | "
           f"{e['same_final_argmax']}/{e['images']}") if e else "— | — | —"
    print(f"| {t} | {size/1e6:.1f} MB | {err} | {tm['load_s']:.2f} s | {tm['encode_s_median']:.2f} s | "
          f"{tm['decode_s_median']:.2f} s | {tm['caption_s_median']:.2f} s | {peak(os.path.join(out, tname + '.log')):.0f} MB |")
EOF
