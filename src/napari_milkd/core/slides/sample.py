"""The built-in sample slide: a synthetic H&E-like pyramidal TIFF with a known tumour region.

Owns generating it (deterministically, from a seed), caching it, and its ground truth. The slide is a
real tiled, JPEG-compressed, 3-level pyramid (downsamples 1, 4, 16; 0.5 µm/px in the TIFF resolution
tags, unit centimetre) opened through the same OpenSlide path as any scanner file. It is generated into
the user cache folder (``$MILKD_CACHE_DIR`` or the platform cache dir), never committed, and written
atomically (temporary file, then rename). May import numpy, scipy, scikit-image, tifffile, platformdirs.

Picture: pink, streaky stroma with sparse small nuclei (normal tissue) around a purple, densely
nucleated blob (the "tumour"), on a white glass background. The tumour outline is
:func:`tumour_polygon_l0`; :func:`truth_mask` rasterises it at any downsample.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_milkd.core.atomic import atomic_path, write_json_atomic

SAMPLE_VERSION = 1
SAMPLE_MPP = 0.5
SAMPLE_SHAPE = (3072, 4608)  # level-0 (rows, cols)
SAMPLE_DOWNSAMPLES = (1, 4, 16)
SAMPLE_TILE = 256
_FIELD_DS = 4  # smooth fields are generated at this downsample, then upsampled
_SEED = 20240714

# Ruifrok & Johnston optical densities (R, G, B) of haematoxylin and eosin.
_OD_H = np.array([0.650, 0.704, 0.286], dtype=np.float32)
_OD_E = np.array([0.072, 0.990, 0.105], dtype=np.float32)


@dataclass(frozen=True)
class SampleSlide:
    """The cached sample slide: its file, resolution and ground truth (level-0 ``(x, y)`` polygons)."""

    path: Path
    mpp: float
    tumour_polygon_l0: np.ndarray
    tissue_polygon_l0: np.ndarray

    def truth_mask(self, downsample: float) -> np.ndarray:
        """Boolean tumour mask at ``downsample`` (shape = level-0 shape // downsample)."""
        return truth_mask(downsample)


def sample_cache_dir() -> Path:
    """Where generated data lives: ``$MILKD_CACHE_DIR`` or the platform's user cache folder."""
    env = os.environ.get("MILKD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-milkd", appauthor=False))


def _blob_polygon(cx: float, cy: float, rx: float, ry: float, seed: int, n: int = 360) -> np.ndarray:
    """A smooth, irregular closed outline: an ellipse with random low-order Fourier wobble, ``(n, 2)`` x/y."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones_like(t)
    for k in range(2, 7):
        radius += rng.uniform(0.02, 0.09) / (k / 2) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    return np.stack([cx + rx * radius * np.cos(t), cy + ry * radius * np.sin(t)], axis=1)


def tissue_polygon_l0() -> np.ndarray:
    """Outline of the tissue section, level-0 ``(x, y)`` pixels (corner origin)."""
    h, w = SAMPLE_SHAPE
    return _blob_polygon(w * 0.5, h * 0.5, w * 0.42, h * 0.40, seed=_SEED)


def tumour_polygon_l0() -> np.ndarray:
    """Outline of the known tumour region, level-0 ``(x, y)`` pixels (corner origin)."""
    h, w = SAMPLE_SHAPE
    return _blob_polygon(w * 0.60, h * 0.45, w * 0.17, h * 0.20, seed=_SEED + 1)


def _polygon_mask(polygon_xy: np.ndarray, downsample: float) -> np.ndarray:
    from skimage.draw import polygon2mask

    h, w = SAMPLE_SHAPE
    shape = (int(h // downsample), int(w // downsample))
    # Pixel (r, c) at this downsample has its centre at level-0 ((r + 0.5) * ds, (c + 0.5) * ds).
    rc = polygon_xy[:, ::-1] / downsample - 0.5
    return polygon2mask(shape, rc)


def truth_mask(downsample: float) -> np.ndarray:
    """Boolean ground-truth tumour mask at ``downsample`` (1 = level 0)."""
    return _polygon_mask(tumour_polygon_l0(), downsample)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-6)


def _nuclei(
    rng: np.random.Generator, region: np.ndarray, density: float, sigma: float, shape: tuple[int, int]
) -> np.ndarray:
    """Nuclear stain in [0, 1]: blurred impulses at random positions inside ``region`` (field resolution)."""
    from scipy import ndimage

    h, w = shape
    n = rng.poisson(density * h * w)
    ys = rng.integers(0, h, n)
    xs = rng.integers(0, w, n)
    keep = region[ys // _FIELD_DS, xs // _FIELD_DS]
    impulses = np.zeros(shape, dtype=np.float32)
    impulses[ys[keep], xs[keep]] = 2 * np.pi * sigma**2 * rng.uniform(0.8, 1.2, int(keep.sum()))
    field = ndimage.gaussian_filter(impulses, sigma)
    return np.clip((field - 0.35) * 2.2, 0.0, 1.0)


#: The steps :func:`ensure_sample_slide` reports to ``on_step`` while it generates the slide.
GENERATION_STEPS = ("staining the tissue", "placing nuclei", "colouring", "writing the pyramidal TIFF")


def render_sample(seed: int = _SEED, on_step: Callable[[str], None] | None = None) -> np.ndarray:
    """Render level 0 of the sample slide, ``SAMPLE_SHAPE + (3,)`` uint8 RGB (deterministic);
    ``on_step`` hears the first three :data:`GENERATION_STEPS` as they start."""
    from scipy import ndimage

    step = on_step or (lambda _: None)
    step(GENERATION_STEPS[0])
    rng = np.random.default_rng(seed)
    h, w = SAMPLE_SHAPE
    fh, fw = h // _FIELD_DS, w // _FIELD_DS
    tissue = _polygon_mask(tissue_polygon_l0(), _FIELD_DS)
    tumour = _polygon_mask(tumour_polygon_l0(), _FIELD_DS) & tissue
    soft_tissue = ndimage.gaussian_filter(tissue.astype(np.float32), 2.0)
    soft_tumour = ndimage.gaussian_filter(tumour.astype(np.float32), 3.0)
    fibres = _smooth_noise(rng, (fh, fw), (1.0, 7.0))
    blotch = _smooth_noise(rng, (fh, fw), (12.0, 12.0))
    eosin_f = soft_tissue * (0.55 + 0.12 * fibres + 0.06 * blotch) * (1 - 0.45 * soft_tumour)
    haem_f = soft_tissue * (0.04 + 0.30 * soft_tumour * (1 + 0.2 * blotch))

    def up(field: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(field, _FIELD_DS, axis=0), _FIELD_DS, axis=1)

    eosin = ndimage.gaussian_filter(up(np.clip(eosin_f, 0, None)), 1.5)
    haem = ndimage.gaussian_filter(up(np.clip(haem_f, 0, None)), 1.5)
    normal_region = tissue & ~tumour
    step(GENERATION_STEPS[1])
    haem += 1.1 * _nuclei(rng, normal_region, 1 / 900, 3.0, (h, w))
    haem += 1.3 * _nuclei(rng, tumour, 1 / 480, 4.0, (h, w))
    step(GENERATION_STEPS[2])
    grain = 0.025 * rng.standard_normal((h, w), dtype=np.float32)
    od = haem[..., None] * _OD_H + eosin[..., None] * _OD_E + (0.04 + grain)[..., None]
    rgb = 250.0 * np.exp(-np.clip(od, 0, None))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _pyramid(level0: np.ndarray) -> list[np.ndarray]:
    levels = [level0]
    for ds in SAMPLE_DOWNSAMPLES[1:]:
        h, w = SAMPLE_SHAPE[0] // ds, SAMPLE_SHAPE[1] // ds
        levels.append(level0.reshape(h, ds, w, ds, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    return levels


def write_pyramidal_tiff(
    path: Path,
    levels: list[np.ndarray],
    mpp: float,
    *,
    tile: int = SAMPLE_TILE,
    description: str = "",
    compression: str | None = "jpeg",
) -> None:
    """Write RGB ``levels`` (level 0 first) as a tiled pyramid OpenSlide opens as generic-tiff.

    Each level is a page in the main IFD chain (reduced levels ``subfiletype=1``) with its resolution
    in pixels per centimetre. ``compression``: ``"jpeg"`` (quality 90), or a lossless tifffile codec
    (``"zlib"``, ``"lzw"``, ``None``). Written to a temporary file in the same folder, then renamed.
    """
    import tifffile

    h0 = levels[0].shape[0]
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        for i, level in enumerate(levels):
            level_mpp = mpp * h0 / level.shape[0]
            tif.write(
                level,
                tile=(tile, tile),
                compression=compression,
                compressionargs={"level": 90} if compression == "jpeg" else None,
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                resolution=(1e4 / level_mpp, 1e4 / level_mpp),
                resolutionunit="CENTIMETER",
                description=description if i == 0 else None,
                metadata=None,
            )


def sample_slide_path(cache_dir: Path | None = None) -> Path:
    """Where the sample slide is (or will be) cached."""
    folder = Path(cache_dir) if cache_dir is not None else sample_cache_dir()
    return folder / f"milkd-sample-v{SAMPLE_VERSION}.tiff"


def sample_slide_exists(cache_dir: Path | None = None) -> bool:
    """True when the sample slide is cached (no generation needed)."""
    path = sample_slide_path(cache_dir)
    return path.exists() and path.with_suffix(".truth.json").exists()


def ensure_sample_slide(
    cache_dir: Path | None = None, on_step: Callable[[str], None] | None = None
) -> SampleSlide:
    """Return the sample slide, generating it (a few seconds) on first use; ``on_step`` hears each of
    :data:`GENERATION_STEPS` as it starts (only when generating)."""
    path = sample_slide_path(cache_dir)
    truth_path = path.with_suffix(".truth.json")
    if not sample_slide_exists(cache_dir):
        level0 = render_sample(on_step=on_step)
        if on_step is not None:
            on_step(GENERATION_STEPS[3])
        write_pyramidal_tiff(
            path, _pyramid(level0), SAMPLE_MPP, description="napari-milkd synthetic sample slide"
        )
        write_json_atomic(
            truth_path,
            {
                "version": SAMPLE_VERSION,
                "mpp": SAMPLE_MPP,
                "tumour_l0_xy": tumour_polygon_l0().round(2).tolist(),
                "tissue_l0_xy": tissue_polygon_l0().round(2).tolist(),
            },
        )
    return SampleSlide(
        path=path,
        mpp=SAMPLE_MPP,
        tumour_polygon_l0=tumour_polygon_l0(),
        tissue_polygon_l0=tissue_polygon_l0(),
    )


def is_sample_slide(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` names the built-in synthetic sample slide (any version, any cache folder)."""
    name = Path(path).name
    return name.startswith("milkd-sample-v") and name.endswith(".tiff")


def coarse_regions(downsample: float, shape: tuple[int, int], tissue: np.ndarray) -> np.ndarray:
    """Weak labels a pathologist might paint on the sample: a rough "contains tumour" region around the
    true tumour (1) and "tumour-free" tissue well away from it (2), as a uint8 map at ``downsample``.

    The tumour region is the truth grown by ~40 µm (coarse, overshooting like a quick brush stroke);
    tumour-free is tissue more than ~150 µm from the tumour.
    """
    from scipy import ndimage

    truth = np.zeros(shape, bool)
    t = truth_mask(downsample)
    truth[: min(shape[0], t.shape[0]), : min(shape[1], t.shape[1])] = t[: shape[0], : shape[1]]
    um_per_px = SAMPLE_MPP * downsample
    near = ndimage.binary_dilation(truth, iterations=max(1, round(40 / um_per_px)))
    far = ~ndimage.binary_dilation(truth, iterations=max(1, round(150 / um_per_px)))
    regions = np.zeros(shape, np.uint8)
    regions[tissue & far] = 2
    regions[near] = 1
    return regions
