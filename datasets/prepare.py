"""Turn a user's picture of a digit into an example prepared the way MNIST's were.

MNIST's digits are light on a dark background, cropped to their bounding box, scaled to fit
a 20x20 box keeping their aspect ratio, and placed in a 28x28 image so that their centre of
mass is at the centre. `prepare_image(path)` does the same to a PNG or JPEG (read by Pillow,
shrunk while it is read) or a `.npy` array, and returns the 28x28 float32 image in [0, 1].

This file does not predict anything; the engine feeds the result to a model.
"""
import os
import warnings

import numpy as np

from errors import DataError

SIZE, BOX = 28, 20          # output side, and the side of the box the digit is scaled into
INK = 0.2                   # a pixel brighter than this fraction of the brightest one is part of the digit
MAX_SIDE = 1024             # pictures are shrunk to fit this while read: a phone photo as floats takes gigabytes
NPY_MAGIC = b"\x93NUMPY"    # the first bytes of every file numpy.save writes


def read_image(path):
    """The image in `path` as a 2-D float array in [0, 1] (grayscale; transparency over white)."""
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected an image file (give the images in it: "
                        f"--input {os.path.join(path, '*.png')})")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (give PNG, JPEG or .npy images with --input)")
    try:
        if path.lower().endswith(".npy"):
            with open(path, "rb") as f:
                if f.read(len(NPY_MAGIC)) != NPY_MAGIC:     # else numpy talks of allow_pickle
                    raise DataError(f"{path}: not a .npy file (numpy.save writes them; this file is not one)")
            image = np.load(path, allow_pickle=False)
        else:
            image = read_picture(path)
    except DataError:
        raise
    except Exception as err:            # each reader raises its own kinds: all mean "not an image"
        raise DataError(f"{path}: cannot read it as an image ({type(err).__name__}: {err})") from None
    return to_gray(np.asarray(image), path)


def read_picture(path):
    """A PNG, JPEG or other picture Pillow reads, at most MAX_SIDE pixels a side, as a 2-D array:
    8-bit pictures in [0, 1], grayscale over white where transparent; 16-bit or float ones as stored."""
    from PIL import Image
    with warnings.catch_warnings(), Image.open(path) as picture:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)    # a big photo is what we expect
        picture.draft("L", (MAX_SIDE, MAX_SIDE))     # JPEG: decode at 1/2, 1/4 or 1/8 size straight away
        picture.thumbnail((MAX_SIDE, MAX_SIDE))      # in place, keeping the aspect ratio
        if picture.mode in ("I", "I;16", "F"):       # to_gray stretches their range to [0, 1]
            return np.asarray(picture, dtype=np.float64)
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, "white")
        gray = Image.alpha_composite(white, rgba).convert("L")     # luminance 0.299 R + 0.587 G + 0.114 B
        return np.asarray(gray, dtype=np.float64) / 255


def to_gray(image, path):
    if image.dtype.kind not in "uif" or image.size == 0:
        raise DataError(f"{path}: expected an array of numbers, got dtype {image.dtype} and shape {image.shape}")
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise DataError(f"{path}: the image holds NaN or infinite values")
    if image.ndim == 1 and image.size == SIZE * SIZE:
        image = image.reshape(SIZE, SIZE)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        scale = 255.0 if image.max() > 1 else 1.0
        rgb, alpha = image[..., :3] / scale, (image[..., 3] / scale if image.shape[2] == 4 else 1.0)
        image = (rgb @ [0.299, 0.587, 0.114]) * alpha + (1 - alpha)     # luminance, over white
    elif image.ndim == 2:
        low, high = image.min(), image.max()
        if low < 0 or high > 255:                     # an unusual range: stretch it to [0, 1]
            image = (image - low) / (high - low)
        elif high > 1:                                # 8-bit pixel values
            image = image / 255.0
    else:
        raise DataError(f"{path}: expected a 2-D grayscale image, an RGB(A) image or 784 values, "
                        f"got shape {image.shape}")
    return image


def resize(image, height, width):
    """Bilinear resampling of a 2-D image to (height, width), pixel centres aligned."""
    rows = (np.arange(height) + 0.5) * image.shape[0] / height - 0.5
    cols = (np.arange(width) + 0.5) * image.shape[1] / width - 0.5
    r0 = np.clip(np.floor(rows).astype(int), 0, image.shape[0] - 1)
    c0 = np.clip(np.floor(cols).astype(int), 0, image.shape[1] - 1)
    r1, c1 = np.minimum(r0 + 1, image.shape[0] - 1), np.minimum(c0 + 1, image.shape[1] - 1)
    fr = np.clip(rows - r0, 0, 1)[:, None]
    fc = np.clip(cols - c0, 0, 1)[None, :]
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c1] * fc
    bottom = image[r1][:, c0] * (1 - fc) + image[r1][:, c1] * fc
    return top * (1 - fr) + bottom * fr


def prepare(image, path="image"):
    """A 2-D grayscale image in [0, 1] -> the 28x28 MNIST-style float32 image."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    if np.median(border) > 0.5:                       # dark ink on light paper: MNIST is the reverse
        image, border = 1 - image, 1 - border
    image = np.clip(image - np.median(border), 0, None)          # the background becomes 0
    if image.max() <= 0:
        raise DataError(f"{path}: no digit found (the image is blank)")
    image = image / image.max()
    rows, cols = np.nonzero(image > INK)
    image = image[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = BOX / max(image.shape)
    h, w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    image = resize(image, h, w)
    # Place it so that its centre of mass lands on the centre of the 28x28 image.
    mass = image.sum()
    com_r = (image.sum(axis=1) @ np.arange(h)) / mass
    com_c = (image.sum(axis=0) @ np.arange(w)) / mass
    top, left = int(round((SIZE - 1) / 2 - com_r)), int(round((SIZE - 1) / 2 - com_c))
    top, left = min(max(top, 0), SIZE - h), min(max(left, 0), SIZE - w)
    out = np.zeros((SIZE, SIZE), np.float32)
    out[top:top + h, left:left + w] = image
    return out


def prepare_image(path):
    """The 28x28 float32 MNIST-style version of the image file `path`."""
    return prepare(read_image(path), path)
