"""Image conversions shared by families and CLIs: pixel range <-> uint8, sample grids, PNG files."""
import math

import jax.numpy as jnp
import numpy as np
from PIL import Image


def to_uint8(x, pixel_range=(-1.0, 1.0)):
  """Map images from `pixel_range` to uint8 [0, 255] (works on jax or numpy arrays, inside jit too)."""
  lo, hi = pixel_range
  x = (x - lo) / (hi - lo)
  return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.uint8)


def make_grid(images, ncols: int | None = None, pad: int = 2) -> np.ndarray:
  """(N, H, W, C) uint8 -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 grid, row-major."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
  return grid


def save_png(path, grid: np.ndarray) -> None:
  """Write an (H, W, C) uint8 array with C in {1, 3} as PNG."""
  grid = np.asarray(grid)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
