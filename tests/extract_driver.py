"""`featcache extract` in a real process, with a pause point a test synchronises on.

    python extract_driver.py MODE MARKER GO -- EXTRACT_ARGS...

MODE ``after-batches:K``: after the K-th batch is handed to the cache writers, write MARKER
and wait until the file GO exists. MODE ``in-commit``: when the first shard commit starts,
write MARKER and wait for GO before the shard is written. A test sends its signal once MARKER
exists and then creates GO, so where the signal lands is decided by events, not by timing.
"""

import sys
import time
from pathlib import Path


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.005)


def _hold_after_batches(count: int, marker: Path, go: Path) -> None:
    import featcache.engine.batches as engine

    real = engine.run_batches

    def run_batches(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            yield batch
            if i + 1 == count:
                marker.write_text("ready")
                _wait_for(go)

    engine.run_batches = run_batches


def _hold_in_first_commit(marker: Path, go: Path) -> None:
    import featcache.cache.shards as shards

    real = shards.write_shard

    def write_shard(*args, **kwargs):
        if not marker.exists():
            marker.write_text("committing")
            _wait_for(go)
        return real(*args, **kwargs)

    shards.write_shard = write_shard


def main(argv) -> int:
    mode, marker, go, sep, *rest = argv
    assert sep == "--", argv
    marker, go = Path(marker), Path(go)
    if mode.startswith("after-batches:"):
        _hold_after_batches(int(mode.split(":")[1]), marker, go)
    elif mode == "in-commit":
        _hold_in_first_commit(marker, go)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from featcache.cli import main as cli_main

    return cli_main(["extract", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
