"""Errors raised by checkpoint conversion."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint cannot be converted.

    For key/shape problems the message lists EVERY missing, unexpected and mis-shaped key (with both
    shapes); the lists are also available as attributes for programmatic use.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple, tuple]] | None = None,
    ):
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])
        lines = [message]
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}):")
            lines += [f"  - {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}):")
            lines += [f"  - {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append(f"mis-shaped keys ({len(self.mismatched)}):")
            lines += [f"  - {k}: checkpoint {tuple(got)} vs expected {tuple(want)}" for k, got, want in self.mismatched]
        super().__init__("\n".join(lines))


class ConversionWarning(UserWarning):
    """A conversion that succeeded on an assumption or against doubtful evidence (one line): a value
    the checkpoint does not determine was assumed, or the checkpoint looks like another arch.

    ``assumed``: ``{config name: assumed value}`` (empty for the other doubts); passing those names
    in ``config`` removes the warning."""

    def __init__(self, message: str, assumed: dict | None = None):
        super().__init__(message)
        self.assumed = dict(assumed or {})
