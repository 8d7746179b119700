#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus, fuzz/seeds/TARGET/, from the test fixtures.

Standard library only (no torch: the PyTorch seed's pickle is written the way torch.save writes
one). The GGUF seeds need gitcap's CLI, to quantize a micro checkpoint made here:

    cargo build --features native && python3 fuzz/make_seeds.py target/debug/gitcap

Seeds are small on purpose: libFuzzer mutates them, and a small input mutates into more shapes
per second.
"""
import collections
import io
import json
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
FIXTURES = ROOT / "tests" / "fixtures"


def write(target, name, data):
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


# ----- safetensors -----

DTYPES = {"F32": ("<f", 4), "F16": ("<e", 2), "F64": ("<d", 8), "I64": ("<q", 8), "BF16": (None, 2)}


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] -> the file's bytes."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + data


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out.append((name, info["dtype"], info["shape"], raw[8 + n + begin : 8 + n + end]))
    return out


def f32(*values):
    return struct.pack(f"<{len(values)}f", *values)


def stream_seeds():
    small = safetensors(
        [
            ("a.weight", "F32", [2, 3], f32(1, -2, 3.5, 0, 1e-3, -7)),
            ("a.bias", "F16", [4], struct.pack("<4e", 1, 2, -0.5, 65504)),
            ("b", "BF16", [2, 2], bytes([0x80, 0x3F, 0, 0xC0, 0x49, 0x40, 0, 0])),
            ("ids", "I64", [3], struct.pack("<3q", 1, 2, 3)),
            ("empty", "F32", [0, 5], b""),
            ("d", "F64", [2], struct.pack("<2d", 0.25, -1e300)),
        ],
        metadata={"format": "pt"},
    )
    for seed in (7, 200):
        write("safetensors_stream", f"small_chunks{seed}.safetensors", bytes([seed]) + small)
    write("safetensors_stream", "header_only.safetensors", bytes([1]) + safetensors([]))


# ----- PyTorch pickle, as torch.save writes it -----


def torch_zip(tensors):
    """tensors: [(name, storage class, shape, raw little-endian bytes)] -> a .pth zip's bytes."""
    # Stand-ins whose pickled names are torch's: pickle stores a global as module + name.
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    sys.modules.update({"torch": torch, "torch._utils": utils})

    def _rebuild_tensor_v2(*args):
        raise NotImplementedError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_classes = {}
    for cls in {c for _, c, _, _ in tensors}:
        storage_classes[cls] = type(cls, (), {"__module__": "torch", "__qualname__": cls})
        setattr(torch, cls, storage_classes[cls])

    class Storage:
        def __init__(self, cls, key, numel):
            self.cls, self.key, self.numel = cls, key, numel

    class Tensor:
        def __init__(self, storage, shape):
            self.storage, self.shape = storage, shape

        def __reduce__(self):
            stride, n = [], 1
            for d in reversed(self.shape):
                stride.insert(0, n)
                n *= d
            return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))

    class TorchPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", storage_classes[obj.cls], obj.key, "cpu", obj.numel)
            return None

    state = collections.OrderedDict()
    sizes = {"FloatStorage": 4, "HalfStorage": 2, "LongStorage": 8, "ByteStorage": 1}
    for key, (name, cls, shape, raw) in enumerate(tensors):
        state[name] = Tensor(Storage(cls, str(key), len(raw) // sizes[cls]), shape)
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(state)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, (_, _, _, raw) in enumerate(tensors):
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")
    for name in ("torch", "torch._utils"):
        del sys.modules[name]
    return out.getvalue()


def pickle_seeds():
    write(
        "pickle",
        "small.pth",
        torch_zip(
            [
                ("layer.weight", "FloatStorage", [2, 3], f32(1, 2, 3, 4, 5, 6)),
                ("layer.bias", "HalfStorage", [2], struct.pack("<2e", 0.5, -1)),
                ("position_ids", "LongStorage", [1, 4], struct.pack("<4q", 0, 1, 2, 3)),
                ("mask", "ByteStorage", [3], bytes([1, 0, 1])),
            ]
        ),
    )


def pickle_regressions():
    """Hand-made inputs that a reader without gitcap's checks would choke on (not seeds: the
    replay test runs them, and tests/native/errors.rs loads the first as a checkpoint)."""
    folder = ROOT / "fuzz" / "regressions" / "pickle"
    folder.mkdir(parents=True, exist_ok=True)
    # 2^40 floats claimed over a 24-byte storage: candle would allocate 4 TiB before reading.
    (folder / "shape_beyond_storage.pth").write_bytes(
        torch_zip([("layer.weight", "FloatStorage", [1 << 20, 1 << 20], f32(1, 2, 3, 4, 5, 6))])
    )

    # A string claiming 4 GiB in a 10-byte pickle (what the fuzzer found, with a valid checksum):
    # candle allocates the claimed length before reading.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02X\xf0\xff\xff\xffabc")
        z.writestr("archive/version", "3\n")
    (folder / "string_claims_4_gib.pth").write_bytes(out.getvalue())


# ----- JSON files -----


def config_seeds():
    for model in ("tiny-coco", "tiny-vatex"):
        folder = FIXTURES / "models" / model
        write("configs", f"{model}_config.json", b"\x00" + (folder / "config.json").read_bytes())
        write("configs", f"{model}_generation.json", b"\x01" + (folder / "generation_config.json").read_bytes())
        write("configs", f"{model}_preprocessor.json", b"\x02" + (folder / "preprocessor_config.json").read_bytes())
    tokenizer = json.loads((FIXTURES / "models" / "tiny-coco" / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    tokenizer["model"]["vocab"] = {t: i for t, i in vocab.items() if i < 120 or i in (1037, 3899, 1055, 2015)}
    write("configs", "tokenizer.json", b"\x03" + json.dumps(tokenizer).encode())
    lines = (FIXTURES / "vocab.txt").read_text().splitlines()
    write("configs", "vocab.txt", b"\x04" + "\n".join(lines[:1100]).encode() + b"\n")


def tokenizer_seeds():
    # BERT uncased ids: [CLS] a dog playing with a fris ##bee . [SEP]; don ' t; s; ##s (2015) first.
    sequences = {
        "caption": [101, 1037, 3899, 2652, 2007, 1037, 10424, 11306, 1012, 102],
        "apostrophe": [1037, 2158, 2123, 1005, 1056, 2175, 1005, 1055, 2009],
        "pieces": [2015, 1055, 2003, 1005, 1005, 1010, 1029, 999, 0, 100, 103],
        "outside": [30521, 30522, 65535, 101, 102],
    }
    for name, ids in sequences.items():
        write("tokenizer", f"{name}.ids", struct.pack(f"<{len(ids)}H", *ids))


# ----- images -----


def image_seeds():
    decode = FIXTURES / "images" / "decode"
    for name in (
        "orient_6.jpg", "grey.jpg", "jpeg_420_restart.jpg", "jpeg_prog_420_restart.jpg", "jpeg_411.jpg",
        "jpeg_mixed_sampling.jpg", "jpeg_cmyk.jpg", "jpeg_adobe_rgb.jpg", "jpeg_17x33_prog.jpg",
        "jpeg_16bit_dqt.jpg", "jpeg_1x1.jpg", "rgba.png", "la.png", "palette_trns.png", "orient_xmp6.png",
        "anim.gif", "lossless.webp", "rgb.bmp",
    ):
        write("image_decode", name, (decode / name).read_bytes())


# ----- GGUF, written by gitcap quantize from a micro checkpoint -----


def gguf_seeds(gitcap):
    source = FIXTURES / "models" / "tiny-coco"
    vocab_size = 32
    config = json.loads((source / "config.json").read_text())
    config.update(vocab_size=vocab_size, bos_token_id=2, eos_token_id=3, pad_token_id=0, max_position_embeddings=16)
    tensors = []
    for name, dtype, shape, raw in read_safetensors(source / "model.safetensors"):
        if shape and shape[0] == 30522:  # word embeddings, output layer: the first rows
            row = len(raw) // shape[0]
            shape, raw = [vocab_size] + shape[1:], raw[: vocab_size * row]
        elif name.endswith("position_embeddings.weight") and not name.startswith("git.image_encoder"):
            row = len(raw) // shape[0]
            shape, raw = [16] + shape[1:], raw[: 16 * row]
        tensors.append((name, dtype, shape, raw))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "cat", "on", "the", "with", "of", "'", "t",
             "don", "s", "##s", "##ing", "play", ".", ",", "man", "red", "bus", "in", "is", "and", "to", "it", "sky",
             "car", "##ed"]
    assert len(words) == vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "micro"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "vocab.txt").write_text("\n".join(words) + "\n")
        shutil.copy(source / "preprocessor_config.json", folder)
        (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": 3}))
        (folder / "model.safetensors").write_bytes(safetensors(tensors))
        for quant in ("q8_0", "f16"):  # q4k: these rows are too short for its blocks
            out = Path(tmp) / f"{quant}.gguf"
            subprocess.run([gitcap, "quantize", "--model", str(folder), "--out", str(out), "--type", quant, "--quiet"], check=True)
            write("gguf", f"micro_{quant}.gguf", out.read_bytes())


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    shutil.rmtree(SEEDS, ignore_errors=True)
    stream_seeds()
    pickle_seeds()
    pickle_regressions()
    config_seeds()
    tokenizer_seeds()
    image_seeds()
    gguf_seeds(sys.argv[1])
    for folder in sorted(SEEDS.iterdir()):
        files = list(folder.iterdir())
        print(f"{folder.name:20} {len(files):3} seeds, {sum(f.stat().st_size for f in files):8} bytes")


if __name__ == "__main__":
    main()
