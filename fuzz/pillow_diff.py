#!/usr/bin/env python3
"""Differential check of gitcap's image decoding against Pillow (libjpeg-turbo inside), on many
files at once: the fuzz corpus, the seeds, or any folder.

    cargo build --release --features native --example decode_dump
    .venv-ref/bin/python fuzz/pillow_diff.py [FOLDER...]      (default: fuzz/corpus/image_decode)

Pillow's side is what transformers does: `ImageOps.exif_transpose`, then `convert("RGB")`. For
every file both accept, the pixels must be equal; the script reports per format how many files
both decoded, how many are identical, the largest difference, and what only one side accepted
(gitcap refuses some truncated files that Pillow pads with grey, by design). Exit status 1 when a
JPEG that gitcap's own decoder handles differs.
"""
import collections
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
DUMP = ROOT / "target" / "release" / "examples" / "decode_dump"
Image.MAX_IMAGE_PIXELS = 100_000_000
warnings.simplefilter("ignore")


def pillow(path):
    try:
        with Image.open(path) as im:
            im.load()
            fmt = im.format
            mode = im.mode
            im = ImageOps.exif_transpose(im)
            return fmt, mode, np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any refusal counts as one
        return None, None, str(e)


def main():
    folders = [Path(a) for a in sys.argv[1:]] or [ROOT / "fuzz" / "corpus" / "image_decode"]
    files = sorted(str(f) for d in folders for f in d.iterdir() if f.is_file())
    if not DUMP.exists():
        sys.exit(f"{DUMP} is missing: cargo build --release --features native --example decode_dump")
    stats = collections.defaultdict(collections.Counter)
    worst = collections.defaultdict(int)
    examples = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as out:
        lines = []
        for i in range(0, len(files), 500):  # argument lists of a sane length
            batch = files[i : i + 500]
            r = subprocess.run([str(DUMP), out + f"/{i}", *batch], capture_output=True, text=True, check=True)
            lines += [(i, j, json.loads(l)) for j, l in enumerate(r.stdout.splitlines())]
        for start, j, ours in lines:
            fmt, mode, theirs = pillow(ours["file"])
            key = fmt or "unknown"
            if "error" in ours and fmt is None:
                stats[key]["both refuse"] += 1
            elif "error" in ours:
                stats[key]["only Pillow decodes"] += 1
            elif fmt is None:
                stats[key]["only gitcap decodes"] += 1
                examples[(key, "only gitcap")].append(ours["file"])
            else:
                raw = np.fromfile(Path(out) / str(start) / f"{j}.rgb", dtype=np.uint8)
                if theirs.shape != (ours["height"], ours["width"], 3):
                    stats[key]["different size"] += 1
                    examples[(key, "size")].append(ours["file"])
                    continue
                diff = int(np.abs(raw.reshape(theirs.shape).astype(int) - theirs.astype(int)).max())
                label = "identical" if diff == 0 else "differ"
                # CMYK JPEGs go to the image crate, not gitcap's decoder (within a level by design)
                if key == "JPEG" and mode == "CMYK":
                    label += " (CMYK)"
                stats[key][label] += 1
                worst[(key, label)] = max(worst[(key, label)], diff)
                if diff:
                    examples[(key, label)].append(ours["file"])
    failed = False
    for key in sorted(stats):
        counts = ", ".join(f"{n} {what}" for what, n in sorted(stats[key].items()))
        print(f"{key:8} {counts}")
        for (k, label), d in sorted(worst.items()):
            if k == key and d:
                print(f"         largest difference ({label}): {d} levels; e.g. {examples[(k, label)][:3]}")
        if key == "JPEG" and (stats[key]["differ"] or stats[key]["different size"]):
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
