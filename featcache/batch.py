"""What a batch job records around the unit of work: its summary and its inputs' annotations.

Used by :func:`featcache.extract.extract` and by the Dask client (:mod:`featcache.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ExtractSummary", "annotate_inputs"]


@dataclass
class ExtractSummary:
    """What an extraction did."""

    inputs: int = 0
    computed: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0
    fingerprints: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)

    def line(self) -> str:
        if self.computed and self.seconds > 0:
            pace = f"{self.computed / self.seconds:.1f} images/s"
        else:  # no rate to speak of: say why nothing ran
            pace = "all from cache" if self.cached == self.inputs else "nothing computed"
        return (f"{self.inputs} inputs: {self.computed} computed, {self.cached} from cache, "
                f"{self.failed} failed in {self.seconds:.1f} s ({pace})")


def annotate_inputs(store, inputs, keys):
    """Record labels, groups, splits and sources of the inputs whose record would change.

    A rerun over the same inputs records nothing (no new annotations file per run). With a
    dataset tag (``inputs.dataset``) the records of that dataset are compared and written.
    """
    from .cache.files import safe_text

    present = [i for i, k in enumerate(keys) if k is not None]
    if not present:
        return
    tag = getattr(inputs, "dataset", None)
    known = store.annotations([keys[i] for i in present], dataset=tag)
    fresh = {"label": inputs.labels, "group": inputs.groups, "split": inputs.splits,
             "source": inputs.sources}
    changed = [i for i in present if {f: v for f, v in known.get(keys[i], {}).items()
                                      if f in fresh} != {
        field: None if values[i] is None or values[i] == "" else safe_text(values[i])
        for field, values in fresh.items()}]
    if changed:
        store.annotate([keys[i] for i in changed], dataset=tag,
                       **{field: [values[i] for i in changed] for field, values in fresh.items()})
