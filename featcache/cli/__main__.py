"""``python -m featcache.cli``: the ``featcache`` command."""

from . import main

raise SystemExit(main())
