"""Cost of the up-front readability check of a folder task (issue 13.7): ``check_images`` on
every image file (cold: no cached verdicts) against a full decode of the same files, on a
test-written folder of small PNGs and photo-sized JPEGs.

    PYTHONPATH=. python benchmarks/bench_unreadable.py [--png 2000] [--jpeg 300]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from machine_load import load1
from PIL import Image

from whichmodel.tasks.loader import check_images


def write(root: Path, n_png: int, n_jpeg: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n_png):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        files.append(path)
    yy, xx = np.mgrid[:375, :500]
    for i in range(n_jpeg):
        arr = np.stack([(xx + i) % 256, (yy * 2) % 256, (xx ^ yy) % 256], -1).astype(np.uint8)
        path = root / f"{i}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        files.append(path)
    return files


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def full_decode(files: list[Path]) -> None:
    for f in files:
        with Image.open(f) as img:
            img.load()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--png", type=int, default=2000)
    parser.add_argument("--jpeg", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write(Path(tmp), args.png, args.jpeg)
        pngs, jpegs = files[: args.png], files[args.png :]
        print(f"load1 before: {load1():.2f}")
        for name, group in (("png 64x64", pngs), ("jpeg 500x375", jpegs)):
            check = timed(check_images, group)
            decode = timed(full_decode, group)
            print(
                f"{name:>13}: {len(group)} files, check {check:.3f} s "
                f"({1e3 * check / len(group):.2f} ms/file), serial full decode {decode:.3f} s"
            )
        print(f"load1 after: {load1():.2f}")


if __name__ == "__main__":
    main()
