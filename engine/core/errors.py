"""The one exception type for bad user input: the CLI prints it on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a file, a model, a task, an option).

    The message must name what is wrong and where (file, entry, model or task), on one line.
    """
