"""What a batch job records around the unit of work: its summary and its inputs' annotations.

Used by :func:`featcache.extract` and by the Dask client (:mod:`featcache.jobs.dask_client`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..cache.files import safe_text

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
    """Record the label, group, split and source of each input whose record would change.

    One record per input (its source), not per content: byte-identical inputs keep their own
    labels, splits and groups. A rerun over the same inputs records nothing (no new
    annotations file per run). With a dataset tag (``inputs.dataset``) the records of that
    dataset are compared and written. Inputs without a key (``None``: unreadable) are skipped.
    """
    present = [i for i, k in enumerate(keys) if k is not None]
    if not present:
        return
    tag = getattr(inputs, "dataset", None)
    fields = ("label", "group", "split")
    known = {r["source"]: r for r in store.records(dataset=tag) if r["source"] is not None}
    fresh = {"label": inputs.labels, "group": inputs.groups, "split": inputs.splits}

    def text(value):
        return None if value is None or value == "" else safe_text(value)

    changed = []
    for i in present:
        record = known.get(text(inputs.sources[i]))
        wanted = {"key": bytes(keys[i]), **{f: text(fresh[f][i]) for f in fields}}
        if record is None or {f: record[f] for f in wanted} != wanted:
            changed.append(i)
    if changed:
        store.annotate([keys[i] for i in changed], dataset=tag,
                       source=[inputs.sources[i] for i in changed],
                       **{f: [fresh[f][i] for i in changed] for f in fields})
