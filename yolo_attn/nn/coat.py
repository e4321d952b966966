"""Placeholder: filled in by the coat block issue."""

__all__: list[str] = []
