"""Where batch jobs find their inputs: files, directories, manifests, .npz arrays.

:func:`collect_inputs` turns the ``INPUT...`` arguments of ``featcache extract`` into one
:class:`InputSet`: the items to embed (paths or arrays, as :mod:`featcache.inputs` takes them)
with a source description, and a label and a group (patient) per item when the source has
them. :func:`shard_positions` splits an input set deterministically for ``--shard i/N``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..exceptions import FeatcacheError

__all__ = ["InputSet", "collect_inputs", "shard_positions", "parse_shard", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom",
    ".ppm", ".pgm", ".pbm", ".jp2",
})
_MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
_PATH_COLUMNS = ("path", "filepath", "file", "filename", "image", "image_path")
_LABEL_COLUMNS = ("label", "labels", "class", "target", "y")
_GROUP_COLUMNS = ("group", "patient", "patient_id", "subject", "subject_id")
_SPLIT_COLUMNS = ("split", "subset", "fold")


@dataclass
class InputSet:
    """Items to embed, with where each came from and optional label, group and split.

    ``dataset`` is one tag for the whole set (``featcache extract --dataset NAME``), recorded
    with the annotations of every item, or None.
    """

    items: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    labels: list = field(default_factory=list)  # str or None per item
    groups: list = field(default_factory=list)  # group (patient) or None per item
    splits: list = field(default_factory=list)  # "train"/"val"/"test"... or None per item
    dataset: "str | None" = None

    def extend(self, items, sources, labels=None, groups=None, splits=None):
        n = len(items)
        self.items += list(items)
        self.sources += list(sources)
        for name, values in (("labels", labels), ("groups", groups), ("splits", splits)):
            getattr(self, name).extend(list(values) if values is not None else [None] * n)

    def __len__(self):
        return len(self.items)

    def subset(self, positions) -> "InputSet":
        pick = [int(p) for p in positions]
        return InputSet(*([column[p] for p in pick] for column in
                          (self.items, self.sources, self.labels, self.groups, self.splits)),
                        dataset=self.dataset)


def collect_inputs(inputs, *, path_column=None, label_column=None, group_column=None,
                   split_column=None) -> InputSet:
    """Gather the items of every INPUT argument, in argument order.

    Parameters
    ----------
    inputs : sequence of str or PathLike
        Image files; directories (searched recursively, sorted; an image under
        ``DIR/<class>/...`` gets the label ``<class>`` when every image sits in a class
        folder); CSV/TSV/Parquet manifests (a path column, optional label and group
        columns; relative paths are resolved against the manifest's folder); ``.npz`` files
        in the MedMNIST layout (``<split>_images`` with optional ``<split>_labels``).
    path_column, label_column, group_column, split_column : str, optional
        Manifest column names; by default the first of the usual names present
        (``path``/``image``/..., ``label``/``class``/..., ``group``/``patient``/...,
        ``split``/``subset``/``fold``).
    """
    found = InputSet()
    if not inputs:
        raise FeatcacheError("no INPUT given: name image files, directories, a CSV/Parquet "
                             "manifest or an .npz file.")
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            _from_directory(path, found)
        elif not path.exists():
            raise FeatcacheError(f"input '{raw}' does not exist; expected an image file, a "
                                 "directory, a CSV/Parquet manifest or an .npz file.")
        elif path.suffix.lower() in _MANIFEST_SUFFIXES:
            _from_manifest(path, found, path_column, label_column, group_column, split_column)
        elif path.suffix.lower() == ".npz":
            _from_npz(path, found)
        else:
            found.extend([path], [str(path)])
    if not found.items:
        raise FeatcacheError(f"no images found in {list(map(str, inputs))}; image files end in "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}.")
    return found


def _from_directory(root: Path, found: InputSet):
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    in_class_dirs = bool(files) and all(len(p.relative_to(root).parts) >= 2 for p in files)
    labels = [p.relative_to(root).parts[0] for p in files] if in_class_dirs else None
    found.extend(files, [str(p) for p in files], labels)


def _pick_column(columns, wanted, defaults, what, manifest, required):
    if wanted is not None:
        if wanted not in columns:
            raise FeatcacheError(f"manifest '{manifest}' has no {what} column '{wanted}'; its "
                                 f"columns are {list(columns)}.")
        return wanted
    lowered = {str(c).lower(): c for c in columns}
    match = next((lowered[name] for name in defaults if name in lowered), None)
    if match is None and required:
        raise FeatcacheError(f"manifest '{manifest}' has no {what} column (looked for "
                             f"{list(defaults)}; found {list(columns)}); name it with "
                             f"--{what}-column.")
    return match


def _from_manifest(manifest: Path, found: InputSet, path_column, label_column, group_column,
                   split_column=None):
    try:
        import pandas as pd
    except ImportError as exc:
        raise FeatcacheError("reading a manifest needs pandas: pip install featcache[pandas]") from exc
    try:
        if manifest.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(manifest)
        else:
            table = pd.read_csv(manifest, sep="\t" if manifest.suffix.lower() == ".tsv" else ",")
    except Exception as exc:  # pandas raises many parser/engine errors
        raise FeatcacheError(f"cannot read manifest '{manifest}': {exc}") from exc
    pcol = _pick_column(table.columns, path_column, _PATH_COLUMNS, "path", manifest, True)
    lcol = _pick_column(table.columns, label_column, _LABEL_COLUMNS, "label", manifest, False)
    gcol = _pick_column(table.columns, group_column, _GROUP_COLUMNS, "group", manifest, False)
    paths = [p if p.is_absolute() else (manifest.parent / p)
             for p in (Path(str(v)).expanduser() for v in table[pcol])]

    def column(name):
        return None if name is None else [None if pd.isna(v) else str(v) for v in table[name]]

    scol = _pick_column(table.columns, split_column, _SPLIT_COLUMNS, "split", manifest, False)
    found.extend(paths, [str(p) for p in paths], column(lcol), column(gcol), column(scol))


def _from_npz(path: Path, found: InputSet):
    try:
        with np.load(path, allow_pickle=False) as data:
            _npz_splits(path, data, found)
    except FeatcacheError:
        raise
    except Exception as exc:  # zipfile, numpy's format reader and pickled arrays raise many types
        raise FeatcacheError(f"cannot read '{path}' as an .npz of image arrays "
                             f"({type(exc).__name__}: {exc}); expected numpy.savez output in the "
                             "MedMNIST layout (<split>_images (n, H, W[, C]) and optional "
                             "<split>_labels), without pickled objects.") from exc


def _npz_splits(path, data, found):
    splits = sorted(k[: -len("_images")] for k in data.files if k.endswith("_images"))
    if not splits and "images" in data.files:
        splits = [""]
    if not splits:
        raise FeatcacheError(f"'{path}' has no '<split>_images' or 'images' array (found "
                             f"{data.files}); expected the MedMNIST layout.")
    for split in splits:
        prefix = f"{split}_" if split else ""
        images = data[f"{prefix}images"]
        if images.ndim not in (3, 4) or images.dtype.kind not in "uif":
            raise FeatcacheError(f"'{path}': array '{prefix}images' has shape {images.shape} and "
                                 f"dtype {images.dtype}; expected numeric images (n, H, W) or "
                                 "(n, H, W, C).")
        labels = data[f"{prefix}labels"] if f"{prefix}labels" in data.files else None
        if labels is not None and len(labels) != len(images):
            raise FeatcacheError(f"'{path}': '{prefix}labels' has {len(labels)} entries for "
                                 f"{len(images)} images; they must match.")
        labels = None if labels is None else [str(v) for v in labels.reshape(len(images), -1)[:, 0]]
        found.extend(list(images), [f"{path.name}:{prefix}images[{i}]" for i in range(len(images))],
                     labels, None, [split or None] * len(images))


def parse_shard(text: str) -> tuple:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise FeatcacheError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise FeatcacheError(f"--shard {text!r}: need 0 <= i < N, e.g. 0/4 ... 3/4")
    return index, count


def shard_positions(sources, index: int, count: int) -> np.ndarray:
    """Positions of shard ``index`` of ``count``: by a hash of each input's source string.

    The split depends only on the inputs themselves (not on their order or on the other
    inputs), so N jobs started with the same INPUT arguments cover every input exactly once.
    """
    if count == 1:
        return np.arange(len(sources))
    owner = [int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogateescape"),
                                            digest_size=8).digest(), "big") % count
             for s in sources]  # surrogateescape: file names need not be valid UTF-8
    return np.flatnonzero(np.asarray(owner) == index)
