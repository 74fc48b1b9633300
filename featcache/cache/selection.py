"""Choosing a namespace of a cache by what it is: model, layer, image size (or its fingerprint).

A cache directory holds one namespace per configuration (:mod:`featcache.cache`); people know
them by model, layer and image size, not by fingerprint. :func:`select_namespace` picks the
one namespace that matches the criteria given; when none or several match, its error lists
the candidates in those terms, each with what sets it apart from the others (decode scale,
precision, storage, weights...) and the short fingerprint that names it alone. ``featcache
probe`` and ``featcache export`` (``--model``, ``--layer``, ``--image-size``, ``--namespace``)
and :func:`featcache.probe.probe_cache` choose through it. Standard library only (besides
featcache's exceptions); the cache is read through its public methods.
"""

from __future__ import annotations

import json

from ..exceptions import CacheValueError

__all__ = ["select_namespace", "describe_namespace"]

#: Entries a candidate is already described by, or that tell nothing apart (the row width
#: follows from model and layer; a weights digest follows from the weights, unless they agree).
_SHOWN = {"model", "layer", "preprocessing.image_size", "dim", "row_shape", "format_version"}
#: Differences worth naming first, in this order; then the rest, alphabetically.
_FIRST = ("decode.decode_scale", "precision", "storage", "pooling", "weights", "weights_digest")
#: Entries shown by the option value that wrote them: a namespace decoded with
#: ``decode_scale="full"`` records no ``decode_scale`` rule, one stored in float32 no ``storage``.
_AS_OPTION = {"decode.decode_scale": lambda v: "full" if v is None else "reduced",
              "storage": lambda v: v or "float32"}
#: At most this many differences per candidate, each value at most this many characters.
_MAX_DIFFERENCES, _MAX_VALUE = 4, 28
#: Fingerprints are shown by their shortest unique prefix, at least this long.
_SHORT = 8


def _flat(config, prefix="") -> dict:
    out = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _image_size(config):
    return (config.get("preprocessing") or {}).get("image_size")


def describe_namespace(config: dict) -> str:
    """``"efficientnet_lite0, layer blocks.4, 64 px"``: what a namespace is, in people's terms."""
    size = _image_size(config)
    return (f"{config.get('model', '?')}, layer {config.get('layer', '?')}, "
            f"{size if size is not None else '?'} px")


def _matches(config: dict, model, layer, image_size) -> bool:
    if model is not None:
        stored = str(config.get("model"))
        # "resnet18" names "torchvision:resnet18"; a prefixed name must be the stored one.
        if str(model) not in (stored, stored.split(":", 1)[-1]):
            return False
    if layer is not None and str(config.get("layer")) != str(layer):
        return False
    if image_size is not None:
        size = _image_size(config)
        try:
            if size is None or int(size) != int(image_size):
                return False
        except (TypeError, ValueError):
            return False
    return True


def _short_names(fingerprints) -> dict:
    """Fingerprint -> its shortest prefix (at least :data:`_SHORT` characters) no other shares."""
    out = {}
    for fp in fingerprints:
        n = min(_SHORT, len(fp))
        while n < len(fp) and any(o != fp and o.startswith(fp[:n]) for o in fingerprints):
            n += 1
        out[fp] = fp[:n]
    return out


def _value(value, key=None) -> str:
    if key in _AS_OPTION:
        value = _AS_OPTION[key](value)
    text = "(none)" if value is None else (
        value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str))
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE - 3] + "..."


def _differences(configs: dict) -> dict:
    """Fingerprint -> ``"decode_scale=..., precision=fp16"``: the entries that vary among them."""
    flat = {fp: _flat(c) for fp, c in configs.items()}
    keys = set().union(*flat.values()) if flat else set()
    varying = {k for k in keys - _SHOWN
               if len({json.dumps(f.get(k), sort_keys=True, default=str)
                       for f in flat.values()}) > 1}
    if "weights" in varying:
        varying.discard("weights_digest")  # the weights already tell them apart
    order = [k for k in _FIRST if k in varying] + sorted(varying - set(_FIRST))
    shown = order[:_MAX_DIFFERENCES]
    more = f", +{len(order) - len(shown)} more" if len(order) > len(shown) else ""
    return {fp: ", ".join(f"{k.rsplit('.', 1)[-1]}={_value(f.get(k), k)}" for k in shown) + more
            for fp, f in flat.items()}


def _listing(configs: dict, short: dict) -> str:
    differences = _differences(configs) if len(configs) > 1 else {}
    parts = []
    for fp, config in configs.items():
        extra = differences.get(fp)
        parts.append(f"{short[fp]} ({describe_namespace(config)}{', ' + extra if extra else ''})")
    return "; ".join(parts) or "none"


def _criteria(namespace, model, layer, image_size) -> str:
    given = {"namespace": namespace, "model": model, "layer": layer, "image_size": image_size}
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                     for k, v in given.items() if v is not None)


def select_namespace(cache, namespace=None, *, model=None, layer=None, image_size=None,
                     error=CacheValueError) -> str:
    """The fingerprint of the one namespace of ``cache`` that matches every criterion given.

    Parameters
    ----------
    cache : featcache.cache.FeatureCache
    namespace : str, optional
        A fingerprint, or a prefix of one (the short form the errors show).
    model : str, optional
        The backbone as recorded (``"torchvision:resnet18"``) or without its library prefix
        (``"resnet18"``).
    layer : str, optional
        The layer as recorded (``"blocks.4"``; ``"default"`` for the pooled penultimate output).
    image_size : int, optional
        The input side length in pixels.
    error : type
        The exception raised (a :class:`~featcache.exceptions.FeatcacheError` subclass;
        :class:`~featcache.exceptions.CacheValueError` by default).

    Returns
    -------
    str
        The full fingerprint. With no criterion, a cache of one namespace gives that one.

    Raises
    ------
    error
        When no namespace, or more than one, matches: the message lists the candidates
        (short fingerprint, model, layer, image size, and what else tells them apart) and
        how to narrow the choice.
    """
    names = cache.namespaces()
    configs = {fp: cache.namespace(fp).config or {} for fp in names}
    short = _short_names(names)
    found = [fp for fp in names
             if (namespace is None or fp.startswith(str(namespace)))
             and _matches(configs[fp], model, layer, image_size)]
    if len(found) == 1:
        return found[0]
    if not names:
        raise error(f"cache {cache.path} holds no namespace yet: extract into it first")
    how = ("pass namespace=FINGERPRINT (the short form shown is enough), or choose by what it "
           "is with model=NAME, layer=NAME, image_size=PIXELS")
    criteria = _criteria(namespace, model, layer, image_size)
    if not criteria:
        raise error(f"cache {cache.path} holds {len(names)} namespaces: "
                    f"{_listing(configs, short)}; {how}")
    if not found:
        what = f"namespace {namespace!r} matches no namespace" if (
            namespace is not None and criteria == _criteria(namespace, None, None, None)) \
            else f"no namespace is {criteria}"
        raise error(f"{what} of cache {cache.path}; it holds: {_listing(configs, short)}")
    raise error(f"{len(found)} namespaces of cache {cache.path} are {criteria}: "
                f"{_listing({fp: configs[fp] for fp in found}, short)}; {how}")
