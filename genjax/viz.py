"""Figures: image grids with lesion outlines, written as PNG.

Images are [N, H, W, 1] arrays in [-1, 1] (genjax's normalised intensities);
masks are [N, H, W, 1] in {0, 1}.
"""

import io

import numpy as np
from PIL import Image
from PIL import ImageDraw

from genjax import files

LESION_RGB = (255, 40, 40)
PREDICTION_RGB = (40, 200, 255)


def to_uint8(images):
  """[-1, 1] floats -> uint8 gray levels; values outside are clipped."""
  images = np.asarray(images, np.float32)
  return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def outline(mask):
  """The ring of pixels just outside a binary [H, W] mask (4-neighbourhood).

  Drawn outside, the outline leaves every lesion pixel visible, so that its
  intensity can still be judged.
  """
  mask = np.asarray(mask) > 0.5
  padded = np.pad(mask, 1, mode="constant")
  dilated = (padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2]
             | padded[1:-1, 2:] | mask)
  return dilated & ~mask


def overlay_outlines(gray, masks, color=LESION_RGB):
  """Draws the outline of each mask onto gray images.

  Args:
    gray: uint8 [N, H, W] or [N, H, W, 3].
    masks: [N, H, W] or [N, H, W, 1] binary masks.
    color: RGB of the outline.

  Returns:
    uint8 [N, H, W, 3].
  """
  rgb = gray if gray.ndim == 4 else np.repeat(gray[..., None], 3, axis=-1)
  rgb = rgb.copy()
  masks = np.asarray(masks)
  if masks.ndim == 4:
    masks = masks[..., 0]
  for i in range(rgb.shape[0]):
    rgb[i][outline(masks[i])] = color
  return rgb


def grid(tiles, ncols, pad=2, pad_value=0):
  """Tiles [N, H, W] or [N, H, W, C] uint8 images into one image, row-major."""
  tiles = np.asarray(tiles)
  if tiles.ndim == 3:
    tiles = tiles[..., None]
  n, h, w, c = tiles.shape
  ncols = max(1, min(ncols, n))
  nrows = -(-n // ncols)
  out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c),
                pad_value, tiles.dtype)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    out[y:y + h, x:x + w] = tiles[i]
  return out if c > 1 else out[..., 0]


def image_grid(images, masks=None, ncols=8, upscale=1):
  """A uint8 grid of [-1, 1] images, with lesion outlines when masks given."""
  gray = to_uint8(np.asarray(images)[..., 0])
  if upscale > 1:
    gray = gray.repeat(upscale, axis=1).repeat(upscale, axis=2)
  if masks is None:
    return grid(gray, ncols)
  masks = np.asarray(masks)[..., 0]
  if upscale > 1:
    masks = masks.repeat(upscale, axis=1).repeat(upscale, axis=2)
  return grid(overlay_outlines(gray, masks), ncols)


def png_bytes(image):
  """A uint8 [H, W] or [H, W, 3] array encoded as PNG."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def save_png(path, image):
  """Writes a uint8 [H, W] or [H, W, 3] array as PNG (any epath path: a
  local file or gs://...), creating folders; returns `path`."""
  files.write_bytes(path, png_bytes(image))
  return path


def _rgb(image):
  image = np.asarray(image, np.uint8)
  return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)


def titled(image, title, height=18):
  """Adds a white title bar above a uint8 image; returns uint8 [H', W, 3]."""
  image = _rgb(image)
  bar = Image.new("RGB", (image.shape[1], height), (255, 255, 255))
  ImageDraw.Draw(bar).text((4, 3), title, fill=(0, 0, 0))
  return np.concatenate([np.asarray(bar), image], axis=0)


def stack_vertically(images, gap=6):
  """Stacks uint8 images of any widths top to bottom on white."""
  images = [_rgb(i) for i in images]
  width = max(i.shape[1] for i in images)
  rows = []
  for image in images:
    pad = np.full((image.shape[0], width - image.shape[1], 3), 255, np.uint8)
    rows += [np.concatenate([image, pad], axis=1),
             np.full((gap, width, 3), 255, np.uint8)]
  return np.concatenate(rows[:-1], axis=0)
