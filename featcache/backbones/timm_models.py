"""timm's models as a resolver: ``"timm:convnext_tiny"`` (``"timm:<arch>.<tag>"`` for a tag).

Named weights are downloaded by timm from the Hugging Face hub when online.
"""

from __future__ import annotations

import functools

from ..exceptions import WeightsError
from .registry import HEAD_PREFIXES, BackboneSpec, Preprocessing, Resolver, register_resolver

__all__ = ["names", "spec", "head_prefixes", "identity"]


def names() -> list:
    """timm's model names."""
    import timm

    return timm.list_models()


def spec(arch: str) -> BackboneSpec | None:
    """The spec of timm model ``arch`` (None when timm has no such model)."""
    import timm

    if not timm.is_model(arch):
        return None
    pre = Preprocessing(image_size=224)
    cfg = timm.get_pretrained_cfg(arch.split(".")[0]) if "." not in arch else None
    cfg = cfg or (timm.get_pretrained_cfg(arch) if "." in arch else None)
    if cfg is not None:
        pre = Preprocessing(image_size=int(cfg.input_size[-1]), mean=tuple(cfg.mean), std=tuple(cfg.std))
    return BackboneSpec(f"timm:{arch}", "timm", arch, pre, f"timm {arch}",
                        architecture=functools.partial(architecture, arch),
                        pretrained=functools.partial(_pretrained, arch),
                        head_prefixes=head_prefixes, identity=functools.partial(identity, arch))


def architecture(arch: str):
    """timm model ``arch`` with random weights."""
    import timm

    return timm.create_model(arch, pretrained=False)


def head_prefixes(model) -> tuple:
    """A timm model's classifier prefix (from its pretrained config) and the usual ones."""
    return ((model.pretrained_cfg.get("classifier") or "head") + ".", *HEAD_PREFIXES)


def _pretrained(arch: str, weights: str):
    import timm

    full = arch if weights == "DEFAULT" else f"{arch.split('.')[0]}.{weights}"
    try:
        model = timm.create_model(full, pretrained=True)
    except Exception as exc:  # hub download or unknown tag
        raise WeightsError(
            f"could not load timm weights for '{full}' (downloaded from the Hugging Face hub "
            f"on first use; no network here?): {exc}. Offline, pass weights='path.pt'."
        ) from exc
    return model, f"timm:{full}", ("timm", full)


def identity(arch: str, weights):
    """What :func:`_pretrained` loads, declared without importing timm (so torch).

    ``timm:<arch>`` with a tag is the pretrained configuration timm's source defines for it
    (hub id, URL or file): the timm version in the key (:mod:`featcache.cache.resolved`, which
    refuses an editable timm) pins it. timm fetches a hub id's latest revision, which a warm
    rerun does not re-check (documented in docs/concepts.md).
    """
    return {"arch": arch, "weights": weights, "by": "timm version"}


register_resolver(Resolver("timm", names, spec, identity=identity))
