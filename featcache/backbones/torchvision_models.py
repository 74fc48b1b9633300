"""torchvision's classification models as a resolver: ``"resnet50"`` or ``"torchvision:resnet50"``.

Named weights (``"DEFAULT"``, ``"IMAGENET1K_V2"``) are downloaded by torchvision itself into the
torch hub cache when online.
"""

from __future__ import annotations

import contextlib
import functools

from ..exceptions import WeightsError
from .registry import BackboneSpec, Preprocessing, Resolver, register_resolver

__all__ = ["names", "spec", "identity"]


def names() -> list:
    """torchvision's classification model names."""
    import torchvision
    from torchvision.models import list_models

    return list_models(module=torchvision.models)


def spec(arch: str) -> BackboneSpec | None:
    """The spec of torchvision model ``arch`` (None when torchvision has no such model)."""
    if arch not in names():
        return None
    from torchvision.models import get_model_weights

    pre = Preprocessing(image_size=224)
    with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
        tf = get_model_weights(arch).DEFAULT.transforms()
        pre = Preprocessing(image_size=int(tf.crop_size[0]), mean=tuple(tf.mean), std=tuple(tf.std))
    return BackboneSpec(f"torchvision:{arch}", "torchvision", arch, pre, f"torchvision {arch}",
                        architecture=functools.partial(_architecture, arch),
                        pretrained=functools.partial(_pretrained, arch),
                        identity=functools.partial(identity, arch))


def _architecture(arch):
    from torchvision.models import get_model

    return get_model(arch, weights=None)


def _pretrained(arch: str, weights: str):
    from torchvision.models import get_model, get_model_weights

    enum = get_model_weights(arch)
    try:
        member = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError:
        raise WeightsError(
            f"torchvision has no weights '{weights}' for {arch}; available: "
            f"{['DEFAULT'] + [w.name for w in enum]}, None, or a checkpoint path."
        ) from None
    try:
        model = get_model(arch, weights=member)
    except Exception as exc:  # URLError, HTTPError, RuntimeError from the hub download
        raise WeightsError(
            f"could not load torchvision weights {member} (they download on first use into "
            f"the torch hub cache; no network here?): {exc}. Offline, pass weights='path.pt'."
        ) from exc
    return model, str(member), ("torchvision", str(member))


def identity(arch: str, weights):
    """What :func:`_pretrained` loads, declared without importing torchvision (so torch).

    A weights tag names a member of the model's weights enum, defined in torchvision's source
    with its URL, whose file name carries a hash prefix checked when torchvision downloads it:
    the torchvision version in the key (:mod:`featcache.cache.resolved`, which refuses an
    editable torchvision) pins the weights; None is the seeded architecture of that version.
    """
    return {"arch": arch, "weights": weights, "by": "torchvision version"}


register_resolver(Resolver("torchvision", names, spec, bare_names=True, identity=identity))
