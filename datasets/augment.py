"""Data augmentation: each training image moved by its own random shift, rotation and scaling;
and NNDL's expansion of the training set by fixed one-pixel shifts.

What this file is: `random_affine(x, image_shape, rng, shift, rotate, scale)` draws one affine
map per example from `rng` and applies it with `affine`, to the whole batch at once (numpy
fancy indexing, no loop over examples). The engine calls it on training batches only.
`expand_by_shifts` makes the training set five times larger once, before training, as
`expand_mnist.py` of Nielsen's *Neural Networks and Deep Learning* does.

What it is not: no elastic distortion, no noise, nothing on validation or test data.

Conventions a reader might misread:
- Each output pixel is *pulled* from the input: out(p) = in(M^-1 (p - c - t) + c), with c the
  image centre, t the shift and M = factor * rotation(angle). So a shift (dy, dx) = (1, 0)
  moves the picture one row down, and a positive angle turns it counter-clockwise as displayed
  (row 0 at the top), like np.rot90.
- Sampling is bilinear with zeros outside the image, so every output value is a convex
  combination of input values and zeros: inputs in [0, 1] stay in [0, 1]. With integer shifts
  and no rotation or scaling the source points are whole pixels and the image moves exactly.
"""
import numpy as np


def random_affine(x, image_shape, rng, shift=0, rotate=0.0, scale=0.0):
    """x moved by random affine maps, one per example, drawn from `rng`.

    Args:
        x: (N, H*W) images, one per row (as the engine's batches are).
        image_shape: (H, W).
        rng: np.random.Generator; the same state gives the same maps.
        shift: shifts are whole pixels, uniform in [-shift, shift] along each axis.
        rotate: angles are uniform in [-rotate, rotate] degrees.
        scale: zoom factors are uniform in [1 - scale, 1 + scale].

    Returns:
        (N, H*W) array of x's dtype; x itself is not modified.
    """
    n = len(x)
    angle = np.deg2rad(rng.uniform(-rotate, rotate, n))
    factor = rng.uniform(1 - scale, 1 + scale, n)
    shifts = rng.integers(-shift, shift + 1, (2, n))                     # rows dy, dx
    return affine(x, image_shape, angle, factor, shifts[0], shifts[1])


def expand_by_shifts(x, y, image_shape, pixels):
    """x and y with each image followed by four copies of it, moved `pixels` down, up, right and
    left, zeros coming in (NNDL's expand_mnist.py, with pixels 1).

    Shape:
        x (N, H*W), y (N,); returns (5N, H*W) of x's dtype and (5N,): rows 5i to 5i+4 are x[i]
        and its copies, all labelled y[i].
    """
    n = len(x)
    still, ones = np.zeros(n), np.ones(n)
    moves = [(pixels, 0), (-pixels, 0), (0, pixels), (0, -pixels)]                  # (dy, dx)
    copies = [affine(x, image_shape, still, ones, np.full(n, dy), np.full(n, dx)) for dy, dx in moves]
    return np.stack([x, *copies], axis=1).reshape(5 * n, -1), np.repeat(y, 5)


def affine(x, image_shape, angle, factor, dy, dx):
    """Each x[i] rotated by angle[i] (radians) and scaled by factor[i] about the image centre,
    then moved by (dy[i], dx[i]) pixels; see the module docstring.

    Shape:
        x (N, H*W); angle, factor, dy, dx (N,); returns (N, H*W) of x's dtype.
    """
    n, (h, w) = len(x), image_shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rows = np.arange(h, dtype=np.float64, like=x)[:, None]               # (H, 1)
    cols = np.arange(w, dtype=np.float64, like=x)                        # (W,)
    oy = rows - cy - np.asarray(dy, np.float64, like=x)[:, None, None]   # (N, H, 1) from the centre
    ox = cols - cx - np.asarray(dx, np.float64, like=x)[:, None, None]   # (N, 1, W)
    cos = (np.cos(angle) / factor)[:, None, None]                        # M^-1 = rotation(-angle) / factor
    sin = (np.sin(angle) / factor)[:, None, None]
    # Rotating back by -angle, written in (row, column) with rows growing downwards: the
    # display's (X, Y) = (ox, -oy), rotated by -angle, is (cos X + sin Y, -sin X + cos Y).
    sy = cos * oy + sin * ox + cy
    sx = cos * ox - sin * oy + cx
    out = bilinear(x.reshape(n, h, w), sy, sx).reshape(n, h * w)
    return np.clip(out, 0, 1, out=out).astype(x.dtype, copy=False)


def bilinear(images, sy, sx):
    """images sampled at the points (sy, sx), bilinearly, reading 0 outside the image.

    Shape:
        images (N, H, W); sy, sx (N, H', W') row and column coordinates; returns (N, H', W') float64.
    """
    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))                   # (N, H+2, W+2), a zero border
    sy = np.clip(sy + 1, 0, h + 1)                                       # padded coordinates; far
    sx = np.clip(sx + 1, 0, w + 1)                                       # outside lands on the border
    y0 = np.minimum(np.floor(sy).astype(np.intp), h)                     # so that y0 + 1 <= h + 1
    x0 = np.minimum(np.floor(sx).astype(np.intp), w)
    fy, fx = sy - y0, sx - x0                                            # weights of the far neighbours
    i = np.arange(n, like=images)[:, None, None]
    top = padded[i, y0, x0] * (1 - fx) + padded[i, y0, x0 + 1] * fx
    bottom = padded[i, y0 + 1, x0] * (1 - fx) + padded[i, y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy
