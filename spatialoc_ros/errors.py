"""Errors that the command line and the node report as one clear line."""


class SpatialocError(Exception):
    """An expected failure (bad input, missing file); shown without a traceback."""


class DataError(SpatialocError):
    """A dataset folder or file is missing, truncated, hostile or inconsistent."""
