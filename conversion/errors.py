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
