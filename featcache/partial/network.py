"""The unfolded network a tail is copied from: pretrained for fitting, bare for reloading.

The frozen prefix runs from the shared, BatchNorm-folded network of
:mod:`featcache.backbones.loading`; the trainable stages need the network as published (its
BatchNorm layers intact, so they can train or keep their statistics). Pretrained networks are
kept in a small per-process memo keyed like the loader's (a weights file by its identity, once
settled), so grid-search candidates and folds copy their tails from one load. Tails are deep copies: the
memoised network itself is never trained.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

from ..backbones.loading import build_network
from ..backbones.weights import may_remember, weights_key

__all__ = ["pretrained_network", "architecture"]

_MEMO: "OrderedDict[tuple, object]" = OrderedDict()
_MEMO_SIZE = 2
_LOCK = threading.Lock()


def pretrained_network(spec, weights, progress=None):
    """``spec``'s network with ``weights`` (BatchNorm not folded), in evaluation mode
    (its loading announced unless ``progress=False``, see
    :func:`featcache.backbones.loading.build_network`)."""
    wkey = weights_key(weights)
    if not may_remember(wkey):  # a weights file changed within the racily-clean window
        network, _, _ = build_network(spec, weights, progress=progress)
        return network.eval()
    key = (spec.name, wkey)
    with _LOCK:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            return _MEMO[key]
        network, _, _ = build_network(spec, weights, progress=progress)
        network.eval()
        _MEMO[key] = network
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
        return network


def architecture(spec):
    """``spec``'s architecture with (seeded) random weights, to load trained arrays into."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        network, _, _ = build_network(spec, None)
    return network
