"""Placeholder: filled in by the dat block issue."""

__all__: list[str] = []
