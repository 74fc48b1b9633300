"""Tests for featcache.embedding helpers not covered through extract and FrozenBackbone."""

from pathlib import Path

import numpy as np
import pytest

import featcache.embedding as embedding
from featcache.embedding import SourcesOf, source_of


def test_sources_are_described_only_when_asked_for(monkeypatch):
    items = [np.zeros((4, 5), np.uint8), Path("/data/x.png"), np.ones((2, 2, 3), np.float32)]
    asked = []
    real = embedding.source_of
    monkeypatch.setattr(embedding, "source_of", lambda item, i: asked.append(i) or real(item, i))
    sources = SourcesOf(items)
    assert len(sources) == 3 and asked == []
    assert sources[np.int64(1)] == "/data/x.png" and asked == [1]
    assert sources[-1] == source_of(items[2], 2) == "input 2 (array (2, 2, 3) float32)"
    assert sources[0:2] == [source_of(items[0], 0), "/data/x.png"]
    with pytest.raises(IndexError):
        sources[3]
