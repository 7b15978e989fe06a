"""The one exception type the library raises for problems a user can fix."""


class CharrnnError(Exception):
    """A bad input, file or setting, described in one line for the user."""
