#!/usr/bin/env python3
"""Regenerates the image-preprocessing fixtures under tests/fixtures/images/.

    .venv-ref/bin/python tests/gen_image_fixtures.py

Needs the reference venv (transformers 5, pillow, numpy, torch). Re-runnable: it rewrites every
fixture and index.json. The fixtures are read by tests/native/image_preprocess.rs.

Reference path: `AutoImageProcessor.from_pretrained(<dir with preprocessor_config.json>)`. In
transformers 5 that picks the torchvision backend when torchvision is installed and the PIL
backend (CLIPImageProcessorPil / VideoMAEImageProcessorPil) otherwise; the class actually used
is recorded in index.json ("processor_class"). Images are loaded with
`transformers.image_utils.load_image` (EXIF transpose + convert("RGB")), as the GIT pipelines do.

What is written:
  index.json                 versions, processors, and one entry per fixture
  clip_config.json           GIT-style CLIPImageProcessor config (224, bicubic)
  videomae_config.json       GIT-video-style VideoMAEImageProcessor config (224, bilinear, 0.5)
  resized/<stem>.png         the processor's resized uint8 image (before the crop), CLIP config,
                             for every source image found
  resized_bilinear/<stem>.png  the same with the VideoMAE config, for one image
  pv_clip_<stem>.bin         pixel_values (3, 224, 224) float32 little-endian, CLIP config
  pv_videomae_<stem>.bin     pixel_values (3, 224, 224) float32 little-endian, VideoMAE config
  decode/                    small synthetic files (EXIF orientations 1-8 as PNG and JPEG, XMP
                             orientation, GIF, WebP, BMP, RGBA/LA/P+tRNS PNG) with PIL's decode
                             (`load_image`) of each as <name>.expected.png; JPEG variants:
                             sequential / progressive / restart markers / 4:4:4, 4:2:2, 4:2:0,
                             and (from a minimal encoder in this script) 4:4:0, 4:1:1, mixed
                             sampling, RGB component ids, Adobe RGB, 16-bit DQT, CMYK, tiny sizes
  filters/                   Pillow's resize of decode/base.png with each filter (0-5) to a few
                             sizes, smaller and larger
"""

import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import transformers
from PIL import Image, ImageOps, PngImagePlugin
from transformers import AutoImageProcessor
from transformers.image_utils import SizeDict, load_image

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
OUT = HERE / "fixtures" / "images"
# Sources not committed to tests/images (too large) are taken from here when present.
SHARED = Path(os.environ.get("GITCAP_SHARED_IMAGES", "/work/shared/images"))

ALL_IMAGES = [
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "chelsea_exif_orientation6.jpg",
    "coffee.png",
    "hubble_deep_field.jpg",
    "logo.png",
    "rocket.jpg",
]
PV_CLIP = ["chelsea.png", "rocket.jpg"]
PV_VIDEOMAE = ["hubble_deep_field.jpg"]
BILINEAR_RESIZED = ["hubble_deep_field.jpg"]

CLIP_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "GitProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}
VIDEOMAE_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "VideoMAEImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "GitProcessor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def find_source(name):
    for d in (IMAGES, SHARED):
        if (d / name).is_file():
            return d / name
    return None


def load_processor(config, tmp):
    d = Path(tmp) / config["image_processor_type"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
    return AutoImageProcessor.from_pretrained(str(d))


def resized_uint8(proc, pil_rgb, config):
    """The processor's own resize step on the loaded image: (H, W, 3) uint8."""
    chw = np.moveaxis(np.asarray(pil_rgb), -1, 0)
    out = proc.resize(chw, SizeDict(**config["size"]), config["resample"])
    out = np.asarray(out)
    assert out.dtype == np.uint8, out.dtype
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def pixel_values(proc, pil_rgb, video):
    if video:
        pv = proc([[pil_rgb]], return_tensors="np")["pixel_values"]
        pv = np.asarray(pv)[0, 0]
    else:
        pv = np.asarray(proc(images=pil_rgb, return_tensors="np")["pixel_values"])[0]
    assert pv.shape == (3, 224, 224) and pv.dtype == np.float32, (pv.shape, pv.dtype)
    return pv


def save_png(arr, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, optimize=True)


# Pillow's exif_transpose method per orientation, and its inverse (to build the stored image).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = dict(TRANSPOSE)
INVERSE[6] = Image.Transpose.ROTATE_90
INVERSE[8] = Image.Transpose.ROTATE_270


def encode_baseline_jpeg(rgb, comps, jfif=True, ycc=True, q=4):
    """A minimal baseline JPEG encoder for sampling layouts Pillow cannot write (4:4:0, 4:1:1,
    mixed). `comps` is [(id, h, v), ...]; fixed-length Huffman codes; flat quantizer `q`.
    Only needs to be a valid file: the expected output is Pillow's decode of it."""
    h_img, w_img = rgb.shape[:2]
    x = rgb.astype(np.float64)
    if ycc:
        y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
        cb = 128 - 0.168736 * x[..., 0] - 0.331264 * x[..., 1] + 0.5 * x[..., 2]
        cr = 128 + 0.5 * x[..., 0] - 0.418688 * x[..., 1] - 0.081312 * x[..., 2]
        planes = [y, cb, cr]
    else:
        planes = [x[..., 0], x[..., 1], x[..., 2]]
    hmax = max(c[1] for c in comps)
    vmax = max(c[2] for c in comps)
    mcux = -(-w_img // (8 * hmax))
    mcuy = -(-h_img // (8 * vmax))
    k = np.arange(8)
    dct = np.sqrt(2 / 8) * np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16)
    dct[0] /= np.sqrt(2)
    zigzag = sorted(range(64), key=lambda i: (i // 8 + i % 8, (i // 8) if (i // 8 + i % 8) % 2 else (i % 8)))

    blocks = []  # per component: (rows, cols, 64) quantized, zigzag order
    for plane, (_, h, v) in zip(planes, comps):
        fx, fy = hmax // h, vmax // v
        ph, pw = -(-h_img // fy) * fy, -(-w_img // fx) * fx
        p = np.pad(plane, ((0, ph - h_img), (0, pw - w_img)), mode="edge")
        p = p.reshape(ph // fy, fy, pw // fx, fx).mean(axis=(1, 3))
        th, tw = mcuy * v * 8, mcux * h * 8
        p = np.pad(p, ((0, th - p.shape[0]), (0, tw - p.shape[1])), mode="edge") - 128
        b = p.reshape(th // 8, 8, tw // 8, 8).transpose(0, 2, 1, 3)
        coef = np.einsum("ij,rcjk,lk->rcil", dct, b, dct)
        qz = np.round(coef / q).astype(int).reshape(th // 8, tw // 8, 64)[..., zigzag]
        blocks.append(qz)

    dc_syms = list(range(12))
    ac_syms = [0x00, 0xF0] + [(r << 4) | s for r in range(16) for s in range(1, 11)]

    def table(syms):
        length = int(np.ceil(np.log2(len(syms) + 1)))
        counts = [0] * 16
        counts[length - 1] = len(syms)
        codes = {s: (i, length) for i, s in enumerate(syms)}
        return bytes(counts) + bytes(syms), codes

    dc_tab, dc_codes = table(dc_syms)
    ac_tab, ac_codes = table(ac_syms)
    bits = []

    def put(value, n):
        bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))

    def put_value(val):
        size = int(abs(val)).bit_length()
        return size, (val if val >= 0 else val + (1 << size) - 1)

    preds = [0] * len(comps)
    for my in range(mcuy):
        for mx in range(mcux):
            for ci, (_, h, v) in enumerate(comps):
                for by in range(v):
                    for bx in range(h):
                        blk = blocks[ci][my * v + by, mx * h + bx]
                        diff = int(blk[0]) - preds[ci]
                        preds[ci] = int(blk[0])
                        size, bitsv = put_value(diff)
                        put(*dc_codes[size])
                        if size:
                            put(bitsv, size)
                        run = 0
                        for c in blk[1:]:
                            c = int(c)
                            if c == 0:
                                run += 1
                                continue
                            while run > 15:
                                put(*ac_codes[0xF0])
                                run -= 16
                            size, bitsv = put_value(c)
                            put(*ac_codes[(run << 4) | size])
                            put(bitsv, size)
                            run = 0
                        if run:
                            put(*ac_codes[0x00])
    bits.extend([1] * (-len(bits) % 8))
    data = bytearray()
    for i in range(0, len(bits), 8):
        byte = int("".join(map(str, bits[i : i + 8])), 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0)

    def seg(marker, payload):
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    out = b"\xff\xd8"
    if jfif:
        out += seg(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += seg(0xDB, bytes([0]) + bytes([q] * 64))
    sof = bytes([8]) + h_img.to_bytes(2, "big") + w_img.to_bytes(2, "big") + bytes([len(comps)])
    for cid, h, v in comps:
        sof += bytes([cid, (h << 4) | v, 0])
    out += seg(0xC0, sof)
    out += seg(0xC4, bytes([0x00]) + dc_tab) + seg(0xC4, bytes([0x10]) + ac_tab)
    sos = bytes([len(comps)]) + b"".join(bytes([cid, 0x00]) for cid, _, _ in comps) + b"\x00\x3f\x00"
    out += seg(0xDA, sos) + bytes(data) + b"\xff\xd9"
    return out


def decode_fixtures(entries):
    d = OUT / "decode"
    d.mkdir(parents=True, exist_ok=True)
    base = load_image(str(find_source("chelsea.png"))).resize((40, 26), Image.Resampling.BICUBIC)
    base.save(d / "base.png")

    def add(name, data, kind):
        (d / name).write_bytes(data)
        expected = np.asarray(load_image(str(d / name)))
        save_png(expected, d / (name + ".expected.png"))
        entries.append({"file": "decode/" + name, "kind": kind, "size": list(expected.shape[1::-1])})

    for o in range(1, 9):
        stored = base.transpose(INVERSE[o]) if o in INVERSE else base.copy()
        exif = Image.Exif()
        exif[0x0112] = o
        for ext, fmt, kw in (("png", "PNG", {}), ("jpg", "JPEG", {"quality": 95})):
            buf = io.BytesIO()
            stored.save(buf, fmt, exif=exif.tobytes(), **kw)
            add(f"orient_{o}.{ext}", buf.getvalue(), f"orientation {o} {fmt}")
        # sanity: the PNG round trip undoes the orientation exactly
        back = np.asarray(load_image(str(d / f"orient_{o}.png")))
        assert np.array_equal(back, np.asarray(base)), o

    # orientation only in XMP (Pillow falls back to tiff:Orientation)
    info = PngImagePlugin.PngInfo()
    xmp = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    info.add_itxt("XML:com.adobe.xmp", xmp)
    buf = io.BytesIO()
    base.transpose(INVERSE[6]).save(buf, "PNG", pnginfo=info)
    add("orient_xmp6.png", buf.getvalue(), "XMP orientation 6 PNG")

    rgb = np.asarray(base)
    h, w = rgb.shape[:2]
    alpha = (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)

    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, alpha])).save(buf, "PNG")
    add("rgba.png", buf.getvalue(), "RGBA PNG, alpha dropped")

    grey = np.asarray(base.convert("L"))
    buf = io.BytesIO()
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(buf, "PNG")
    add("la.png", buf.getvalue(), "LA PNG")

    pal = base.quantize(16)
    pal.info["transparency"] = 3
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=3)
    add("palette_trns.png", buf.getvalue(), "P PNG with tRNS")

    buf = io.BytesIO()
    frame2 = Image.fromarray(255 - rgb)
    base.save(buf, "GIF", save_all=True, append_images=[frame2], duration=100, loop=0)
    add("anim.gif", buf.getvalue(), "animated GIF, first frame")

    buf = io.BytesIO()
    base.save(buf, "WEBP", lossless=True)
    add("lossless.webp", buf.getvalue(), "lossless WebP")

    buf = io.BytesIO()
    base.save(buf, "BMP")
    add("rgb.bmp", buf.getvalue(), "24-bit BMP")

    buf = io.BytesIO()
    base.convert("L").save(buf, "JPEG", quality=95)
    add("grey.jpg", buf.getvalue(), "greyscale JPEG")

    # JPEG coding variants, on an odd-sized crop so that partial MCUs and edges are exercised
    # (all decoded by libjpeg-turbo through Pillow for the expected output)
    src = load_image(str(find_source("chelsea.png")))
    crop = src.crop((150, 60, 211, 105))  # 61x45
    big_q = [min(32767, 6 * (i + 1)) for i in range(64)]  # > 255: 16-bit DQT, SOF1
    variants = [
        ("jpeg_444.jpg", crop, {"subsampling": 0, "quality": 85}),
        ("jpeg_422.jpg", crop, {"subsampling": 1, "quality": 85}),
        ("jpeg_420.jpg", crop, {"subsampling": 2, "quality": 85}),
        ("jpeg_420_q100.jpg", crop, {"subsampling": 2, "quality": 100}),
        ("jpeg_420_q5.jpg", crop, {"subsampling": 2, "quality": 5}),
        ("jpeg_420_optimized.jpg", crop, {"subsampling": 2, "optimize": True}),
        ("jpeg_420_restart.jpg", crop, {"subsampling": 2, "restart_marker_blocks": 3}),
        ("jpeg_prog_444.jpg", crop, {"subsampling": 0, "progressive": True}),
        ("jpeg_prog_422.jpg", crop, {"subsampling": 1, "progressive": True}),
        ("jpeg_prog_420.jpg", crop, {"subsampling": 2, "progressive": True, "quality": 90}),
        (
            "jpeg_prog_420_restart.jpg",
            crop,
            {"subsampling": 2, "progressive": True, "restart_marker_blocks": 2},
        ),
        ("jpeg_prog_grey.jpg", crop.convert("L"), {"progressive": True}),
        ("jpeg_adobe_rgb.jpg", crop, {"keep_rgb": True, "subsampling": 0}),
        ("jpeg_16bit_dqt.jpg", crop, {"qtables": [big_q, big_q], "subsampling": 2}),
        ("jpeg_1x1.jpg", crop.resize((1, 1)), {"subsampling": 2}),
        ("jpeg_3x5.jpg", crop.resize((3, 5)), {"subsampling": 2}),
        ("jpeg_5x3_422.jpg", crop.resize((5, 3)), {"subsampling": 1}),
        ("jpeg_17x33_prog.jpg", crop.resize((17, 33)), {"subsampling": 2, "progressive": True}),
        ("jpeg_cmyk.jpg", crop.convert("CMYK"), {"quality": 90}),
    ]
    for name, im, kw in variants:
        buf = io.BytesIO()
        im.save(buf, "JPEG", **kw)
        add(name, buf.getvalue(), "JPEG " + ", ".join(f"{k}={v}" for k, v in kw.items() if k != "qtables"))

    # sampling layouts Pillow's encoder cannot produce, from the minimal encoder above
    arr = np.asarray(crop)
    custom = [
        ("jpeg_440.jpg", [(1, 1, 2), (2, 1, 1), (3, 1, 1)], {}),
        ("jpeg_411.jpg", [(1, 4, 1), (2, 1, 1), (3, 1, 1)], {}),
        ("jpeg_mixed_sampling.jpg", [(1, 2, 2), (2, 2, 1), (3, 1, 1)], {}),
        ("jpeg_ids_rgb.jpg", [(82, 1, 1), (71, 1, 1), (66, 1, 1)], {"jfif": False, "ycc": False}),
        ("jpeg_ids_123_nojfif.jpg", [(1, 1, 1), (2, 1, 1), (3, 1, 1)], {"jfif": False}),
    ]
    for name, comps, kw in custom:
        add(name, encode_baseline_jpeg(arr, comps, **kw), f"JPEG sampling {comps}")


def filter_fixtures(entries):
    """Every PIL filter, downscaling and upscaling, on the small decode/base.png."""
    d = OUT / "filters"
    d.mkdir(parents=True, exist_ok=True)
    base = Image.open(OUT / "decode" / "base.png")
    for code in range(6):
        for w, h in ((17, 11), (93, 57), (40, 9)):
            name = f"filter{code}_{w}x{h}.png"
            base.resize((w, h), resample=code).save(d / name)
            entries.append({"file": "filters/" + name, "resample": code, "size": [w, h]})


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    (OUT / "clip_config.json").write_text(json.dumps(CLIP_CONFIG, indent=2) + "\n")
    (OUT / "videomae_config.json").write_text(json.dumps(VIDEOMAE_CONFIG, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        clip = load_processor(CLIP_CONFIG, tmp)
        videomae = load_processor(VIDEOMAE_CONFIG, tmp)

    index = {
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "processor_class": {"clip": type(clip).__name__, "videomae": type(videomae).__name__},
        "images": [],
        "decode": [],
    }
    for name in ALL_IMAGES:
        src = find_source(name)
        if src is None:
            print(f"skipping {name}: not in {IMAGES} or {SHARED}", file=sys.stderr)
            continue
        stem = Path(name).stem
        img = load_image(str(src))
        entry = {
            "name": name,
            "committed": src.parent == IMAGES,
            "source_size": list(img.size),
        }
        r = resized_uint8(clip, img, CLIP_CONFIG)
        save_png(r, OUT / "resized" / f"{stem}.png")
        entry["resized"] = f"resized/{stem}.png"
        entry["resized_size"] = [r.shape[1], r.shape[0]]
        if name in BILINEAR_RESIZED:
            rb = resized_uint8(videomae, img, VIDEOMAE_CONFIG)
            save_png(rb, OUT / "resized_bilinear" / f"{stem}.png")
            entry["resized_bilinear"] = f"resized_bilinear/{stem}.png"
        if name in PV_CLIP:
            pv = pixel_values(clip, img, video=False)
            (OUT / f"pv_clip_{stem}.bin").write_bytes(pv.astype("<f4").tobytes())
            entry["pv_clip"] = f"pv_clip_{stem}.bin"
        if name in PV_VIDEOMAE:
            pv = pixel_values(videomae, img, video=True)
            (OUT / f"pv_videomae_{stem}.bin").write_bytes(pv.astype("<f4").tobytes())
            entry["pv_videomae"] = f"pv_videomae_{stem}.bin"
        index["images"].append(entry)
        print(name, entry["source_size"], "->", entry["resized_size"])

    decode_fixtures(index["decode"])
    index["filters"] = []
    filter_fixtures(index["filters"])
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"processors: {index['processor_class']}; wrote {total / 1e6:.2f} MB to {OUT}")


if __name__ == "__main__":
    main()
