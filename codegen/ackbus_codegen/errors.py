"""Errors the generator reports to its user."""


class GenerationError(Exception):
    """Generation failed; the message names the file (and line, where known)."""
