"""The format version of featcache's features and cache files (one home for it).

It enters every configuration fingerprint, every shard's attributes and the cache marker
``featcache.json``: a change here makes older caches refuse to open instead of serving rows
computed differently.
"""

__all__ = ["FORMAT_VERSION"]

#: Version of the feature and cache format.
FORMAT_VERSION = 1
