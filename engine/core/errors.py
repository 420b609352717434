"""The engine's exception types: bad user input (the CLI prints it on one line and exits 2) and
an undecodable image (raised in Ray workers, turned into bad user input by the driver)."""


class UserError(Exception):
    """Bad input from the user (a file, a model, a task, an option).

    The message must name what is wrong and where (file, entry, model or task), on one line.
    """


class ImageDecodeError(ValueError):
    """An image that cannot be decoded (zero bytes, unknown format, truncated or corrupt)."""
