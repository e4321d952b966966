"""Placeholder: filled in by the bot block issue."""

__all__: list[str] = []
