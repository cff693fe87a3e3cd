"""The errors a user can fix (bad data, flags, paths, weights, workdirs).

Entry points print such an error as one line naming the file or value and exit with status 2;
anything else is a bug and keeps its traceback. Subclasses keep their builtin bases
(ValueError, FileNotFoundError...) so that callers catching those still work.
"""


class UserError(Exception):
    """Bad input: the message is one line that names the offending file, flag or value."""


class DataError(UserError, ValueError):
    """Invalid input data; the message names the offending file, id or value."""
