"""Checks that a cache file really holds what it declares, before anything is read.

Nothing read from a cache file may size an allocation before it is checked against the file's
real size: :func:`check_stored` makes sure a dataset's declared bytes fit in the file and are
really stored there, so a damaged or crafted file is a
:class:`~featcache.exceptions.CacheCorruptError` naming it, never a memory bomb.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

from ..exceptions import CacheCorruptError


#: Lower bound of the bytes one variable-length string takes in a dataset's own storage
#: (its length and global heap id); bounds how many strings a file of a given size can hold.
_VLEN_MIN_BYTES = 12


_LAYOUTS = (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED)


def _element_bytes(ds) -> int:
    """Bytes one element of ``ds`` takes at least in the dataset's own storage."""
    if ds.dtype.kind == "O" or h5py.check_vlen_dtype(ds.dtype) is not None:
        return _VLEN_MIN_BYTES
    return ds.dtype.itemsize


def check_stored(ds, path, size: int, what: str = "shard") -> None:
    """Check that dataset ``ds`` of file ``path`` really holds the data its shape declares.

    Run before reading ``ds`` (or allocating from its shape): a damaged or crafted file can
    declare 10**8 rows in a few kilobytes, and reading it would allocate gigabytes of fill
    values. The declared bytes must fit in the file (``size``, its real size on disk), be
    stored (not unallocated or compressed away) and lie inside the file.

    Parameters
    ----------
    ds : h5py.Dataset
    path : path-like
        The file, named in the error.
    size : int
        The file's size on disk in bytes (``os.stat(path).st_size``).
    what : str, default="shard"
        What the file is, for the error message.

    Raises
    ------
    CacheCorruptError
        When the dataset cannot hold what it declares.
    """
    if ds.shape is None:
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} has no shape")
    need = math.prod(ds.shape) * _element_bytes(ds)
    if need > size:
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} declares shape {ds.shape} "
                                f"(at least {need} bytes) but the whole file has {size} bytes")
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() not in _LAYOUTS or dcpl.get_external_count():
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} keeps its data in other "
                                "files (virtual or external storage); featcache never does")
    stored = ds.id.get_storage_size()
    if stored < need:
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} declares shape {ds.shape} "
                                f"({need} bytes) but stores only {stored} bytes")
    offset = ds.id.get_offset()
    if offset is not None and offset + stored > size:
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} ends at byte "
                                f"{offset + stored}, past the end of the file ({size} bytes)")


def get_dataset(group, name: str, path, size: int, shape: tuple, dtype=None,
                what: str = "shard"):
    """The dataset ``group[name]``, checked: shape, dtype (``None``: a string) and storage.

    Raises
    ------
    CacheCorruptError
        When it is missing, has another shape or dtype, or does not store its data
        (see :func:`check_stored`).
    """
    ds = group.get(name)
    full = f"{group.name.rstrip('/')}/{name}".lstrip("/")
    ok = isinstance(ds, h5py.Dataset) and ds.shape == shape and (
        ds.dtype == dtype if dtype is not None else h5py.check_string_dtype(ds.dtype) is not None)
    if not ok:
        got = ("missing" if not isinstance(ds, h5py.Dataset)
               else f"shape {ds.shape} dtype {ds.dtype}")
        raise CacheCorruptError(f"{what} {path}: dataset {full!r} should have shape {shape} "
                                f"dtype {dtype if dtype is not None else 'string'}, found {got}")
    check_stored(ds, path, size, what)
    return ds


def scalar_attr(attrs, name: str, path, what: str = "shard"):
    """Attribute ``name`` after checking it is one value (not an array that could be huge).

    Raises
    ------
    CacheCorruptError
        When it is missing or holds more than one value.
    """
    if name not in attrs:
        raise CacheCorruptError(f"{what} {path}: attribute {name!r} is missing")
    shape = attrs.get_id(name).shape
    if shape is None or math.prod(shape) != 1:
        raise CacheCorruptError(f"{what} {path}: attribute {name!r} should be a single value, "
                                f"found shape {shape}")
    value = attrs[name]
    return value.reshape(-1)[0] if isinstance(value, np.ndarray) else value


def count_attr(attrs, name: str, path) -> int:
    value = scalar_attr(attrs, name, path)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise CacheCorruptError(f"shard {path}: attribute {name!r} should be a count "
                                f"(an integer >= 0), found {value!r}")
    return int(value)
