"""Errors meant for people: one line that names the subject and the file."""

from __future__ import annotations

from pathlib import Path


class UniregError(Exception):
    """An error the user can act on.

    ``str(err)`` is one line: ``sub-003: path/to/file.nii.gz: what went wrong; what to do``.
    The CLI prints it as ``unireg: <that line>`` and exits with status 1 (no traceback).
    """

    def __init__(self, message: str, *, subject: str | None = None, path: str | Path | None = None):
        self.message = " ".join(str(message).split())  # always one line
        self.subject = subject
        self.path = str(path) if path is not None else None
        super().__init__(self.message)

    def with_context(self, *, subject: str | None = None, path: str | Path | None = None) -> UniregError:
        """Fill in the subject/file where the raiser did not know them."""
        if self.subject is None and subject is not None:
            self.subject = subject
        if self.path is None and path is not None:
            self.path = str(path)
        return self

    def __str__(self) -> str:
        parts = [p for p in (self.subject, self.path) if p]
        return ": ".join(parts + [self.message])
