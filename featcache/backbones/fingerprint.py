"""The configuration fingerprint: a hash of everything that changes the numbers (torch-free)."""

from __future__ import annotations

import hashlib
import json

from ..formats import FORMAT_VERSION

__all__ = ["fingerprint", "NOT_FINGERPRINTED", "FORMAT_VERSION"]


#: Configuration entries kept for people but left out of the fingerprint (they do not change numbers).
NOT_FINGERPRINTED = ("weights_file", "row_shape")


def fingerprint(config: dict) -> str:
    """Hex digest (20 characters) of the canonical JSON of a configuration.

    Everything that changes the numbers is in ``config``; entries named in
    :data:`NOT_FINGERPRINTED` (such as where a checkpoint file lies) are left out.
    """
    kept = {k: v for k, v in config.items() if k not in NOT_FINGERPRINTED}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=10).hexdigest()
