#!/usr/bin/env python3
"""Relative error ||x - ref|| / ||ref|| between two feature dumps, per image and mean: the metric
bench/peer/accuracy.py reports for ONNX Runtime int8 vs fp32, for any other pair (gitcap q8_0 vs
f32, for instance).

    python3 bench/peer/rel_err.py X REF

X and REF are both files or both folders. A file is a .npy array, a raw little-endian float32
file (.f32/.bin), or JSON: a list of numbers (nested is fine), or an object whose "features"
holds one. Folders are compared file by file on the names they share (a.npy beside a.npy, or
a.json); the metric is over all elements of each pair. Prints one JSON line per pair and a
summary line with the mean and max. Needs only numpy.
"""
import json
import sys
from pathlib import Path

import numpy as np


def load(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path).astype(np.float64).ravel()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data = data["features"]
        return np.asarray(data, np.float64).ravel()
    return np.fromfile(path, dtype="<f4").astype(np.float64)


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    if x.shape != ref.shape:
        raise SystemExit(f"shapes differ: {x.shape} vs {ref.shape}")
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    x, ref = Path(sys.argv[1]), Path(sys.argv[2])
    if x.is_dir() != ref.is_dir():
        raise SystemExit("X and REF must both be files or both be folders")
    if x.is_dir():
        names = sorted({p.name for p in x.iterdir() if p.is_file()} & {p.name for p in ref.iterdir() if p.is_file()})
        if not names:
            raise SystemExit(f"{x} and {ref} share no file names")
        pairs = [(n, x / n, ref / n) for n in names]
    else:
        pairs = [(x.name, x, ref)]
    errs = []
    for name, a, b in pairs:
        e = rel_err(load(a), load(b))
        errs.append(e)
        print(json.dumps({"file": name, "rel_err": e}))
    print(json.dumps({"summary": True, "files": len(errs), "mean": float(np.mean(errs)), "max": float(np.max(errs))}))


if __name__ == "__main__":
    main()
