"""The content photos of the style benchmark, from packages that carry them (no download).

Held out for measurement: scikit-image's astronaut, chelsea, coffee and rocket and scikit-learn's china and
flower. Training: the natural photos of Debian's ``opencv-doc`` (its ``examples/data`` folder; logos, charts,
text and calibration boards left out) and matplotlib's grace_hopper. ``python benchmarks/style_photos.py DIR``
writes ``DIR/train`` and ``DIR/test`` as PNG files.
"""

from __future__ import annotations

import os
import numpy as np
from common import REPO  # noqa: F401  (the checkout's package on sys.path, as for every script)

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
OPENCV_PHOTOS = (
    "Blender_Suzanne1.jpg", "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "building.jpg",
    "butterfly.jpg", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "left.jpg", "leuvenA.jpg",
    "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "pca_test1.jpg", "pic1.png", "pic3.png", "pic5.png",
    "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "starry_night.jpg", "stuff.jpg", "board.jpg",
)
HELD_OUT = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


def held_out_photos():
    """``{name: uint8 (H, W, 3)}`` of the held-out photos."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in HELD_OUT[:4]}
    sample = load_sample_images()
    for name, image in zip(("china", "flower"), sample.images):
        photos[name] = image
    return {k: np.ascontiguousarray(v[..., :3]) for k, v in photos.items()}


def training_photos():
    """``{name: uint8 (H, W, 3)}`` of the training photos that are installed."""
    from PIL import Image

    photos = {}
    for file in OPENCV_PHOTOS:
        path = os.path.join(OPENCV_DATA, file)
        if os.path.isfile(path):
            with Image.open(path) as im:
                photos[os.path.splitext(file)[0]] = np.asarray(im.convert("RGB"))
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    except Exception:  # matplotlib without its sample data
        pass
    return photos


def write_folders(root: str) -> None:
    from PIL import Image

    for split, photos in (("train", training_photos()), ("test", held_out_photos())):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for name, image in photos.items():
            Image.fromarray(image).save(os.path.join(root, split, f"{name}.png"))
        print(f"{split}: {len(photos)} photos")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the style benchmark's photos as DIR/train and DIR/test.")
    parser.add_argument("dir", help="the folder to write")
    write_folders(parser.parse_args().dir)
