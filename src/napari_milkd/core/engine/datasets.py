"""Bags for training and evaluation: an in-memory :class:`BagSet`, image-folder loading, splits, augmentation.

Owns (a) :class:`BagSet`, the one structure every bag source produces (image folders here; slide tile
bags build it with :meth:`BagSet.from_arrays`), (b) loading a GlaS-style image folder + label CSV,
(c) the patient-grouped validation split and (d) vectorised flip/rot90 and H&E stain augmentation. May
import numpy, Pillow and torch (torch only inside :func:`augment` and :func:`stain_jitter`); never napari
or Qt.

Label CSVs are read strictly (:func:`read_label_table`): UTF-8 only (a Latin-1 file is refused with the
line of its first non-UTF-8 byte), a malformed CSV (e.g. a field over 131 072 characters) is refused with
its line, a row with an empty label cell or no name is skipped and said (never taken for a negative bag),
exact duplicate rows are merged and said, and duplicates that disagree (label or patient) are refused,
since they would put one image in training and validation at once.

Shapes: images (N, S, S, 3) uint8 at the training size S; labels (N,) uint8 (1 positive, 0 negative);
hard labels (N, S, S) uint8 (0, 1, or 255 = no opinion); training-size masks (N, S, S) uint8 {0, 1};
full-resolution evaluation masks: a list of (H_i, W_i) uint8 {0, 1}.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_milkd.core.errors import InputError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IGNORE = 255


@dataclass
class BagSet:
    """In-memory bags (one image = one bag) with bag labels and optional pixel information.

    ``masks`` (training size) feed full supervision and mask-based validation; ``eval_masks`` (original
    resolution) feed evaluation; ``hard_labels`` are human corrections that override the teacher.
    """

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    groups: np.ndarray | None = None
    hard_labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    eval_masks: list[np.ndarray] | None = None
    skipped: list[str] = field(default_factory=list)
    #: One-line remarks for the user about the label CSV (rows skipped and why, duplicates merged).
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            shape, dtype = self.images.shape, self.images.dtype
            raise InputError(f"images must be (N, H, W, 3) uint8, got {shape} {dtype}")
        if len(self.labels) != n or len(self.names) != n:
            raise InputError("images, labels and names differ in length")
        if not np.isin(self.labels, (0, 1)).all():
            raise InputError("bag labels must be 0 (negative) or 1 (positive)")
        for what, arr in (("hard labels", self.hard_labels), ("masks", self.masks)):
            if arr is not None and arr.shape != self.images.shape[:3]:
                raise InputError(f"{what} shape {arr.shape} does not match images {self.images.shape[:3]}")
        if self.groups is not None and len(self.groups) != n:
            raise InputError("groups and images differ in length")

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        hard_labels: np.ndarray | None = None,
        groups: Sequence[object] | np.ndarray | None = None,
        names: Sequence[str] | None = None,
        masks: np.ndarray | None = None,
    ) -> BagSet:
        """Build bags from arrays already at the training size (e.g. slide tiles): (N, S, S, 3) uint8."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return cls(
            images=images,
            labels=np.asarray(labels, dtype=np.uint8),
            names=list(names) if names is not None else [f"bag_{i}" for i in range(len(images))],
            groups=None if groups is None else np.asarray(groups, dtype=object),
            hard_labels=None if hard_labels is None else np.asarray(hard_labels, dtype=np.uint8),
            masks=None if masks is None else (np.asarray(masks) > 0).astype(np.uint8),
        )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_pos(self) -> int:
        """Number of positive bags."""
        return int(self.labels.sum())

    @property
    def n_neg(self) -> int:
        """Number of negative bags."""
        return len(self) - self.n_pos

    def subset(self, index: Sequence[int] | np.ndarray) -> BagSet:
        """The bags at ``index`` (copies of the arrays)."""
        idx = np.asarray(index, dtype=np.int64)
        return BagSet(
            images=self.images[idx].copy(),
            labels=self.labels[idx].copy(),
            names=[self.names[i] for i in idx],
            groups=None if self.groups is None else self.groups[idx],
            hard_labels=None if self.hard_labels is None else self.hard_labels[idx].copy(),
            masks=None if self.masks is None else self.masks[idx].copy(),
            eval_masks=None if self.eval_masks is None else [self.eval_masks[i] for i in idx],
        )

    @classmethod
    def concat(cls, sets: Sequence[BagSet]) -> BagSet:
        """One :class:`BagSet` holding the bags of ``sets`` in order (e.g. the tile bags of several slides).

        Images must share one size. Groups, hard labels and masks are kept when every set has them and
        dropped when none has; a mix (some sets with, some without) raises :class:`InputError`. Skipped
        names and notes are concatenated.
        """
        if not sets:
            raise InputError("no bags to concatenate")
        sizes = {s.images.shape[1:] for s in sets}
        if len(sizes) > 1:
            raise InputError(f"bags of different image sizes cannot be combined: {sorted(sizes)}")

        def joined(attr: str) -> np.ndarray | None:
            parts = [getattr(s, attr) for s in sets]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise InputError(f"some bag sets have {attr.replace('_', ' ')} and some do not")
            return np.concatenate(parts)

        eval_masks = None
        if all(s.eval_masks is not None for s in sets):
            eval_masks = [m for s in sets for m in s.eval_masks or []]
        return cls(
            images=np.concatenate([s.images for s in sets]),
            labels=np.concatenate([s.labels for s in sets]).astype(np.uint8),
            names=[n for s in sets for n in s.names],
            groups=joined("groups"),
            hard_labels=joined("hard_labels"),
            masks=joined("masks"),
            eval_masks=eval_masks,
            skipped=[n for s in sets for n in s.skipped],
            notes=[n for s in sets for n in s.notes],
        )

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[BagSet, BagSet]:
        """Split into (train, validation); grouped by ``groups`` (patients) when set; seeded.

        Whole groups go to validation so no group is on both sides. Among 64 seeded shuffles of the groups
        (each filled to about ``val_fraction`` of the bags), the one whose validation is closest to the
        overall positive rate and to the target size, with both classes on both sides, is taken.
        """
        if not 0 < val_fraction < 1:
            raise InputError(f"validation fraction must be in (0, 1), got {val_fraction}")
        groups = self.groups if self.groups is not None else np.arange(len(self), dtype=object)
        keys = np.array([str(g) for g in groups])
        uniq = sorted(set(keys.tolist()))
        if len(uniq) < 2:
            raise InputError("need at least two groups (patients) to make a validation split")
        rng = np.random.default_rng(seed)
        target = val_fraction * len(self)
        rate = self.labels.mean()
        best, best_cost = None, np.inf
        for _ in range(64):
            chosen: list[str] = []
            count = 0
            for gi in rng.permutation(len(uniq)):
                if count >= target or len(chosen) == len(uniq) - 1:
                    break
                chosen.append(uniq[gi])
                count += int((keys == uniq[gi]).sum())
            val_mask = np.isin(keys, chosen)
            lv, lt = self.labels[val_mask], self.labels[~val_mask]
            both = len(set(lv.tolist())) == 2 and len(set(lt.tolist())) == 2
            cost = abs(lv.mean() - rate) + abs(val_mask.sum() - target) / len(self) + (0 if both else 10)
            if cost < best_cost:
                best, best_cost = val_mask, cost
        assert best is not None
        return self.subset(np.flatnonzero(~best)), self.subset(np.flatnonzero(best))


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise InputError(f"cannot read image {path}: {type(exc).__name__}") from exc


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise InputError(f"cannot read mask {path}: {type(exc).__name__}") from exc
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=-1)
    return (arr > 0).astype(np.uint8)


def _resize(arr: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    from PIL import Image

    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if nearest:
        return np.asarray(Image.fromarray(arr).resize((size, size), resample))
    return np.asarray(Image.fromarray(arr).resize((size, size), resample, reducing_gap=3.0))


def _index_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {folder}")
    files = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            files.setdefault(p.stem, p)
            files.setdefault(p.name, p)
    return files


def _find(files: dict[str, Path], name: str, suffixes: Sequence[str] = ("",)) -> Path | None:
    """The file of ``files`` (one folder's index) that ``name`` means, or ``None``.

    ``name`` comes from a user's CSV: it is only ever looked up among the folder's own files, and a name
    with a folder part (``../x.png``, ``/etc/passwd``, ``a\\b``) matches nothing, so a CSV can never make
    us read outside the folder.
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    for candidate in (name, *(stem + s for s in suffixes)):
        if candidate in files:
            return files[candidate]
    return None


@dataclass
class LabelTable:
    """What a label CSV says: the usable rows and what was skipped or merged (with file line numbers).

    ``rows``: ``(name, label, patient)``, one per image name; ``lines``: the file line of each row;
    ``values``: each row's label cell as written; ``skipped``: ``(line, name, reason)``; ``merged``:
    ``(line, name)`` of exact duplicate rows folded into an earlier one.
    """

    path: Path
    rows: list[tuple[str, int, str | None]]
    lines: list[int]
    values: list[str]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    merged: list[tuple[int, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line per kind of skipped or merged row, naming the file and the first lines."""
        out = []
        reasons: dict[str, list[tuple[int, str]]] = {}
        for line, name, reason in self.skipped:
            reasons.setdefault(reason, []).append((line, name))
        for reason, items in reasons.items():
            out.append(f"{self.path.name}: {_count(items, 'row')} {reason} skipped ({_first(items)})")
        if self.merged:
            merged = _count(self.merged, "exact duplicate row")
            out.append(f"{self.path.name}: {merged} merged ({_first(self.merged)})")
        return out


def _count(items: Sequence[object], what: str) -> str:
    return f"{len(items)} {what}{'' if len(items) == 1 else 's'}"


def _first(items: Sequence[tuple[int, str]], n: int = 3) -> str:
    shown = ", ".join(f"line {line}: {name[:60] or '(no name)'}" for line, name in items[:n])
    return shown + (f", and {len(items) - n} more" if len(items) > n else "")


def _decode_csv(path: Path) -> str:
    """The CSV's text; a file that is not UTF-8 is refused with the line of its first bad byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read label CSV {path}: {exc.strerror or exc}") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{path.name} is UTF-16 text; save it as UTF-8 (CSV UTF-8 in Excel)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path.name}, line {line}: not UTF-8 (byte 0x{data[exc.start]:02x}; the file is probably "
            "Latin-1 or Windows-1252): save it as UTF-8 (CSV UTF-8 in Excel)"
        ) from None


def read_label_table(
    labels_csv: str | Path,
    name_column: str,
    label_column: str,
    positive: str,
    patient_column: str | None = None,
) -> LabelTable:
    """Read a label CSV strictly: see the module docstring; label 1 where the cell is ``positive`` (any case).

    Raises :class:`InputError` (one line naming the file and line) for a missing file, a file that is not
    UTF-8, a malformed CSV, a missing column, conflicting duplicate rows, or no usable row.
    """
    path = Path(labels_csv)
    if not path.is_file():
        raise InputError(f"label CSV not found: {path}")
    reader = csv.DictReader(io.StringIO(_decode_csv(path), newline=""))
    want = positive.strip().lower()
    table = LabelTable(path=path, rows=[], lines=[], values=[])
    seen: dict[str, int] = {}
    try:
        columns = reader.fieldnames or []
        for col in (name_column, label_column, patient_column):
            if col is not None and col not in columns:
                raise InputError(f"{path.name} has no column {col!r} (columns: {', '.join(columns)})")
        for row in reader:
            line = reader.line_num
            name = (row[name_column] or "").strip()
            value = (row[label_column] or "").strip()
            if not name:
                table.skipped.append((line, "", "without an image name"))
                continue
            if not value:
                table.skipped.append((line, name, "with an empty label cell"))
                continue
            label = int(value.lower() == want)
            patient = (row[patient_column] or "").strip() if patient_column else None
            if name in seen:
                i = seen[name]
                _, label0, patient0 = table.rows[i]
                if (label0, patient0) != (label, patient):
                    what = "labels" if label0 != label else "patients"
                    was = table.values[i] if label0 != label else patient0
                    now = value if label0 != label else patient
                    raise InputError(
                        f"{path.name}: {name[:60]} is listed twice with different {what} (line "
                        f"{table.lines[i]}: {was!r:.40}, line {line}: {now!r:.40}); keep one row per image"
                    )
                table.merged.append((line, name))
                continue
            seen[name] = len(table.rows)
            table.rows.append((name, label, patient))
            table.lines.append(line)
            table.values.append(value)
    except csv.Error as exc:
        # the reader counts a line once it is parsed: the bad one is the next
        raise InputError(f"{path.name}, line {reader.line_num + 1}: not a well-formed CSV ({exc})") from None
    if not table.rows:
        reason = f" ({table.notes()[0]})" if table.skipped else ""
        raise InputError(f"{path.name} has no usable rows{reason}")
    return table


def read_label_csv(
    labels_csv: str | Path,
    name_column: str,
    label_column: str,
    positive: str,
    patient_column: str | None = None,
) -> list[tuple[str, int, str | None]]:
    """Read ``(name, label, patient)`` rows; label 1 where the label cell is ``positive`` (any case).

    The rows of :func:`read_label_table` (rows with an empty label cell skipped, exact duplicates merged).
    """
    return read_label_table(labels_csv, name_column, label_column, positive, patient_column).rows


def load_image_folder(
    images_dir: str | Path,
    labels_csv: str | Path,
    name_column: str,
    label_column: str,
    positive: str,
    size: int,
    masks_dir: str | Path | None = None,
    patient_column: str | None = None,
    keep_eval_masks: bool = False,
    require_both_classes: bool = True,
) -> BagSet:
    """Load image-folder bags: images resized to ``size`` × ``size``, labels from the CSV.

    CSV names may be given with or without extension. Masks are matched by name (``NAME.*`` or
    ``NAME_anno.*``) and must have the image's size; they are kept at the training size (``masks``: a
    negative bag's is all background, as evaluation scores it, so full supervision and mask-based model
    selection follow the weak protocol) and, with ``keep_eval_masks``, at full resolution
    (``eval_masks``, as stored). CSV rows without an image or with an
    empty label cell are listed in ``skipped``; ``notes`` says what was skipped or merged, one line each.
    Two rows naming the same image (``im3`` and ``im3.png``) are merged when they agree and refused when
    they do not. Raises :class:`InputError` for no images, a missing column, a mask size mismatch, or
    (with ``require_both_classes``) no positive or no negative bag.
    """
    if size < 16:
        raise InputError(f"size must be at least 16 px, got {size}")
    files = _index_files(Path(images_dir), "images")
    if not files:
        raise InputError(f"no images found in {images_dir}")
    table = read_label_table(labels_csv, name_column, label_column, positive, patient_column)
    mask_files = _index_files(Path(masks_dir), "masks") if masks_dir is not None else None
    images, labels, names, groups, masks, eval_masks = [], [], [], [], [], []
    skipped = [name for _, name, reason in table.skipped if name]
    no_image: list[tuple[int, str]] = []
    by_path: dict[Path, int] = {}
    for (name, label, patient), line in zip(table.rows, table.lines, strict=True):
        img_path = _find(files, name)
        if img_path is None:
            skipped.append(name)
            no_image.append((line, name))
            continue
        if img_path in by_path:
            i = by_path[img_path]
            if (labels[i], groups[i]) != (label, patient):
                raise InputError(
                    f"{table.path.name}: line {line} ({name[:60]}) and an earlier row name the same image "
                    f"{img_path.name} with different labels or patients; keep one row per image"
                )
            table.merged.append((line, name))
            continue
        by_path[img_path] = len(images)
        img = _read_rgb(img_path)
        if mask_files is not None:
            mask_path = _find(mask_files, img_path.stem, ("", "_anno", "_mask"))
            if mask_path is None:
                raise InputError(f"no mask for image {img_path.name} in {masks_dir}")
            mask = _read_mask(mask_path)
            if mask.shape != img.shape[:2]:
                raise InputError(
                    f"mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                    f"{img.shape[1]}x{img.shape[0]}"
                )
            # The weak protocol's truth: a negative bag is all background, whatever its mask outlines
            # (GlaS masks also outline benign glands; training on them teaches "gland", not "tumour").
            masks.append(_resize(mask if label else np.zeros_like(mask), size, nearest=True))
            if keep_eval_masks:
                eval_masks.append(mask)
        images.append(_resize(img, size, nearest=False))
        labels.append(label)
        names.append(img_path.stem)
        groups.append(patient)
    if not images:
        raise InputError(f"no image in {images_dir} matches a name in {Path(labels_csv).name}")
    lab = np.asarray(labels, dtype=np.uint8)
    if require_both_classes and (lab.min() == lab.max()):
        which = "negative" if lab.min() == 1 else "positive"
        raise InputError(f"no {which} bag: check --label-column and --positive")
    return BagSet(
        images=np.stack(images),
        labels=lab,
        names=names,
        groups=np.asarray(groups, dtype=object) if patient_column else None,
        masks=np.stack(masks) if masks else None,
        eval_masks=eval_masks if keep_eval_masks and mask_files is not None else None,
        skipped=skipped,
        notes=table.notes()
        + (
            [f"{table.path.name}: {_count(no_image, 'row')} without an image skipped ({_first(no_image)})"]
            if no_image
            else []
        ),
    )


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random dihedral transform (flips × rot90) per sample of a square batch (N, C, S, S), vectorised.

    Stack images with their masks along C so both get the same transform. The random draws use
    ``generator`` (on the CPU) so a seeded run is reproducible on any device.
    """
    import torch

    n = x.shape[0]
    codes = torch.randint(0, 8, (n,), generator=generator).to(x.device)
    flip = (codes & 1).bool().view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)
    rot = codes >> 1
    out = x.clone()
    for k in (1, 2, 3):  # loop over the 3 rotation amounts, each vectorised over its samples
        idx = torch.nonzero(rot == k).flatten()
        if idx.numel():
            out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
    return out


#: Optical density (RGB) of haematoxylin, eosin and DAB, one row each (Ruifrok & Johnston; scikit-image's
#: ``rgb_from_hed``).
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def stain_jitter(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """H&E colour augmentation (after Tellez et al. 2018) of a float RGB batch (N, 3, H, W) in [0, 1].

    Each image's optical density is split into haematoxylin, eosin and DAB by colour deconvolution; each
    stain is scaled by ``U(1 − sigma, 1 + sigma)`` and shifted by ``U(−sigma, sigma)`` (optical-density
    units), and the image is recomposed, clipped to [0, 1]. Draws use ``generator`` (on the CPU).
    """
    import torch

    n = x.shape[0]
    rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float32)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed).to(x.device)
    scale = (1 + sigma * (2 * torch.rand((n, 3), generator=generator) - 1)).to(x.device)
    shift = (sigma * (2 * torch.rand((n, 3), generator=generator) - 1)).to(x.device)
    od = -torch.log(x.float().clamp_min(1e-6))
    hed = torch.einsum("nchw,cd->ndhw", od, hed_from_rgb)
    hed = hed * scale.view(n, 3, 1, 1) + shift.view(n, 3, 1, 1)
    out = torch.exp(-torch.einsum("ndhw,dc->nchw", hed, rgb_from_hed.to(x.device))).clamp_(0, 1)
    return out.to(x.dtype)
