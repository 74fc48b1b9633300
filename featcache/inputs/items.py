"""Anything a user passes as ``X`` -> a list of items, one per sample, in input order.

:func:`as_items` accepts paths (in any container, pandas included), stacked arrays, lists of
arrays or PIL images, torch tensors, map-style ``torch.utils.data.Dataset`` objects returning
an image or an ``(image, label, ...)`` tuple, and rows as dicts (the Hugging Face ``datasets``
row format, ``{"image": ..., "label": ...}``). torch and pandas are handled duck-typed: nothing
here imports them (a Dataset is recognised only when torch is already imported, as it must be
for one to exist).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ..exceptions import InputError
from .errors import as_input_error, describe, input_error

__all__ = ["as_items", "check_image", "IMAGE_FIELDS"]

#: Field names looked for, in this order, in rows given as dicts (``image_field=None``).
IMAGE_FIELDS = ("image", "img", "pixel_values", "path", "image_path", "file", "filename")

_ARTICLE = {"path": "a path", "array": "an array", "PIL image": "a PIL image"}
_DTYPE_HELP = ("accepted dtypes: uint8 (8-bit), other integer types such as uint16, "
               "int16 or int32, and float16/float32/float64")


def as_items(X, *, image_field: str | None = None) -> list:
    """Normalise any accepted ``X`` to a list of items, one per sample, in input order.

    Parameters
    ----------
    X : sequence of paths, array-like, list of PIL images, torch tensor, Dataset or dict rows
        Paths (str / PathLike; also an ``(n, 1)`` object array, a pandas Series or a
        one-column DataFrame); an ndarray ``(n, H, W)`` or ``(n, H, W, C)``, C in {1, 3, 4};
        a list of ndarrays (or ``(C, H, W)`` torch tensors) of one shape and dtype; a list of
        PIL images (any sizes and modes); a torch tensor ``(n, C, H, W)``; a map-style
        ``torch.utils.data.Dataset`` whose items are an image or a tuple whose first element
        is the image (``(image, label)``, as torchvision datasets return); a sequence of dicts
        (rows of a Hugging Face ``datasets.Dataset``) holding the image in ``image_field``.
    image_field : str, optional
        The dict key holding the image, for rows given as dicts; None takes the first of
        :data:`IMAGE_FIELDS` present in the first row (``"image"``, ``"img"``, ...).

    Returns
    -------
    list
        :class:`pathlib.Path`, ndarray ``(H, W[, C])`` or :class:`PIL.Image.Image` items.

    Raises
    ------
    InputError
        For an empty ``X``, a single path, a feature matrix, a bad dtype or shape, mixed kinds,
        rows without the image field, an IterableDataset.
    """
    if isinstance(X, (str, bytes, os.PathLike)):
        raise InputError(f"X is a single path ({os.fsdecode(X)!r}); X must hold one input per "
                         f"sample. Wrap it in a list: [{os.fsdecode(X)!r}].")
    if isinstance(X, Image.Image):
        raise InputError("X is a single PIL image; wrap it in a list: [image].")
    if _is_torch_dataset(X):
        return _from_elements(_dataset_images(X, image_field))
    module = type(X).__module__
    if module.startswith("torch"):
        X = _torch_to_numpy(X)
    elif module.startswith("pandas"):
        X = _pandas_to_objects(X)
    if isinstance(X, np.ndarray):
        if X.dtype.kind in "OUS" and (X.ndim == 1 or (X.ndim == 2 and X.shape[1] == 1)):
            return _from_elements(list(X.ravel()), image_field)
        return _from_stacked(X)
    if isinstance(X, Mapping) or not hasattr(X, "__iter__"):
        hint = ""
        if isinstance(X, Mapping):
            field = image_field or next((f for f in IMAGE_FIELDS if f in X), "image")
            hint = f" For a dict of columns, pass its image column: X[{field!r}]."
        raise InputError(f"X of type {type(X).__name__} is not accepted; pass a list of paths, "
                         f"an array (n, H, W[, C]), a list of PIL images or a torch tensor."
                         + hint)
    return _from_elements(list(X), image_field)


# ---------------------------------------------------------------- torch and pandas
def _is_torch_dataset(X) -> bool:
    """Whether X is a torch Dataset (torch is never imported here: it is loaded if X is one)."""
    torch = sys.modules.get("torch")
    data = getattr(getattr(torch, "utils", None), "data", None)
    dataset = getattr(data, "Dataset", None)
    return isinstance(dataset, type) and isinstance(X, dataset)


def _dataset_images(dataset, image_field):
    """The image of every sample of a map-style Dataset, in index order."""
    name = type(dataset).__name__
    iterable = getattr(sys.modules["torch"].utils.data, "IterableDataset", ())
    if isinstance(dataset, iterable):
        raise InputError(f"X is an IterableDataset ({name}), which has no length or order "
                         "featcache can rely on; pass its images as a list, e.g. "
                         "X = [sample[0] for sample in dataset].")
    try:
        n = len(dataset)
    except TypeError:
        raise InputError(f"X is a torch Dataset ({name}) without __len__; pass its images as "
                         "a list, e.g. X = [dataset[i][0] for i in range(n)].") from None
    images = []
    for i in range(n):
        with as_input_error(dataset, i, f"cannot be read from the Dataset ({name}[{i}])"):
            sample = dataset[i]
        if isinstance(sample, (tuple, list)) and sample:
            sample = sample[0]  # (image, label, ...)
        images.append(sample)
    if images and isinstance(images[0], Mapping):
        return _row_images(images, image_field)
    return images


def _row_images(rows, image_field):
    """The image field of every row given as a dict."""
    first = rows[0]
    field = image_field or next((f for f in IMAGE_FIELDS if f in first), None)
    if field is None:
        raise input_error(first, 0, f"is a dict with keys {sorted(map(str, first))}, none of "
                          f"them an image field (looked for {list(IMAGE_FIELDS)})",
                          "Pass the images themselves, e.g. X = [row['<image key>'] for row "
                          "in rows].")
    images = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or field not in row:
            what = (f"has no field {field!r} (keys {sorted(map(str, row))})"
                    if isinstance(row, Mapping) else f"is a {type(row).__name__}, not a dict")
            raise input_error(row, i, f"{what}, but input 0 is a row with the image in {field!r}",
                              f"Every row needs the image field, or pass X = [row[{field!r}] "
                              "for row in rows].")
        images.append(row[field])
    return images


def _is_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _tensor_image(t, index):
    """One torch tensor image, ``(C, H, W)`` (C in 1, 3, 4) or ``(H, W)``, as an ``(H, W[, C])`` array."""
    if not (t.ndim == 2 or (t.ndim == 3 and t.shape[0] in (1, 3, 4))):
        raise input_error(t, index, f"is a torch tensor of shape {tuple(t.shape)}, not an image",
                          "Expected (C, H, W) with C in 1, 3, 4, or (H, W).")
    with as_input_error(t, index, "is a torch tensor that cannot be read as an array"):
        t = t.detach().cpu()
        if "bfloat16" in str(t.dtype):
            t = t.float()
        arr = t.numpy()
    return arr if arr.ndim == 2 else arr.transpose(1, 2, 0)


def _torch_to_numpy(X):
    if X.ndim != 4 or X.shape[1] not in (1, 3, 4):
        raise InputError(f"a torch tensor must be (n, C, H, W) with C in 1, 3, 4, got shape "
                         f"{tuple(X.shape)}; add a channel axis with x.unsqueeze(1) for (n, H, W).")
    device, layout = getattr(X, "device", None), str(getattr(X, "layout", "torch.strided"))
    if getattr(device, "type", "cpu") == "meta" or layout != "torch.strided" or X.is_complex():
        raise InputError(f"X is a torch tensor on device {device} with layout {layout} and "
                         f"dtype {X.dtype}, which holds no image data featcache can read; pass "
                         "a dense real tensor with data (e.g. x.to_dense().to('cpu')), an "
                         "array or file paths.")
    try:
        X = X.detach().cpu()
        if "bfloat16" in str(X.dtype):
            X = X.float()
        return X.numpy().transpose(0, 2, 3, 1)
    except Exception as exc:  # torch raises many types for tensors numpy cannot take
        raise InputError(f"X is a torch tensor (device {device}, dtype {X.dtype}) that cannot be "
                         f"read as an array ({type(exc).__name__}: {exc}); pass x.detach()"
                         ".cpu().numpy() or file paths.") from exc


def _pandas_to_objects(X):
    if hasattr(X, "columns"):
        if X.shape[1] != 1:
            raise InputError(f"X is a DataFrame with {X.shape[1]} columns {list(X.columns)}; "
                             f"pass the one column of paths, e.g. X[['path']].")
        X = X.iloc[:, 0]
    return X.to_numpy(dtype=object)


# ---------------------------------------------------------------- arrays and elements
def _check_dtype(dtype, what):
    if dtype.kind not in "uif":
        raise InputError(f"{what} has dtype {dtype}, which is not an image dtype; {_DTYPE_HELP}.")


def _from_stacked(X):
    _check_dtype(X.dtype, "X")
    if X.ndim == 2:
        raise InputError(f"X is a 2-D numeric array {X.shape}, which looks like a feature matrix; "
                         f"images are expected as (n, H, W) or (n, H, W, C) with C in 1, 3, 4 "
                         f"(or pass file paths).")
    if X.ndim not in (3, 4) or (X.ndim == 4 and X.shape[3] not in (1, 3, 4)):
        hint = ("; it looks channels-first, use X.transpose(0, 2, 3, 1)"
                if X.ndim == 4 and X.shape[1] in (1, 3, 4) else "")
        raise InputError(f"X has shape {X.shape}; images are expected as (n, H, W) or "
                         f"(n, H, W, C) with C in 1, 3, 4{hint}.")
    if X.shape[0] == 0:
        raise InputError("X is empty (0 samples); pass at least one image.")
    if X.shape[1] == 0 or X.shape[2] == 0:
        raise InputError(f"X has shape {X.shape}: the images have no pixels.")
    return list(X)


def _kind(element, index):
    if isinstance(element, (str, os.PathLike)):
        if not os.fspath(element):
            raise InputError(f"input {index} is an empty string; expected a path to an image file.")
        return "path"
    if isinstance(element, np.ndarray):
        return "array"
    if isinstance(element, Image.Image):
        return "PIL image"
    missing = (element is None or type(element).__name__ in ("NAType", "NaTType")
               or (isinstance(element, float) and element != element))
    hint = "."
    if isinstance(element, tuple) and element:
        hint = " (for (image, label) pairs pass X = [image for image, *_ in pairs])."
    raise input_error(element, index, "is a missing value (None/NaN)" if missing else
                      f"is a {type(element).__name__}, which is not an accepted input",
                      "Expected a path (str or os.PathLike), an ndarray image or a PIL image"
                      + hint)


def _from_elements(elements, image_field=None):
    if not elements:
        raise InputError("X is empty (0 samples); pass at least one image.")
    if isinstance(elements[0], Mapping):
        elements = _row_images(elements, image_field)
    elements = [_tensor_image(e, i) if _is_tensor(e) else e for i, e in enumerate(elements)]
    first = _kind(elements[0], 0)
    for i, element in enumerate(elements):
        kind = _kind(element, i)
        if kind != first:
            raise input_error(element, i, f"is {_ARTICLE[kind]} but input 0 is {_ARTICLE[first]}",
                              "X must hold one kind of input (all paths, all arrays or all PIL "
                              "images).")
    if first == "path":
        return [Path(os.fspath(e)).expanduser() for e in elements]
    if first == "array":
        _check_array_list(elements)
    return list(elements)


def check_image(arr: np.ndarray, index: int) -> None:
    """Raise the input's InputError unless ``arr`` is an ``(H, W[, C])`` image of an image dtype."""
    _check_dtype(arr.dtype, describe(arr, index))
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))) or 0 in arr.shape:
        raise input_error(arr, index, "is not an image",
                          "Expected (H, W) or (H, W, C) with C in 1, 3, 4.")


def _check_array_list(arrays):
    ref = arrays[0]
    check_image(ref, 0)
    for i, arr in enumerate(arrays):
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            raise input_error(arr, i, f"has shape {arr.shape} and dtype {arr.dtype} but input 0 "
                              f"has shape {ref.shape} and dtype {ref.dtype}",
                              "A list of arrays must share one shape and dtype; resize them "
                              "first, or save them as files or pass PIL images, which may "
                              "differ in size.")
