"""The one exception type for bad user input.

Anything raised as :class:`InputError` is the user's to fix (a missing file, a corrupt
snapshot, a wrong argument): the CLI prints its message on one line and exits 2, with no
traceback. Everything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a path, file, key or argument that is not what was expected."""
