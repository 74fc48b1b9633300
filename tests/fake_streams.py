"""A text stream that says whether it is a terminal, for tests of what featcache prints where."""

import io


class TtyStream(io.StringIO):
    """An in-memory stderr whose ``isatty()`` answers ``tty``."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty
