"""The one error policy: what is the user's problem, and what is a bug.

A *user error* is an input that is wrong — a bad config key or value, a missing or corrupt
file, a tokenizer or checkpoint from another model, a request the model cannot serve. Every
module raises a subclass of `UserError` for these, with a message that names the file or key
and the problem. ``megacompress.cli.run`` prints a user error as one ``error: ...`` line and
exits 2 (``--debug`` shows its traceback); anything else is a bug and keeps its traceback.

This module imports nothing of the package, so every layer can depend on it.
Classes keep ``ValueError`` / ``RuntimeError`` as a second base where callers caught those.
"""

from __future__ import annotations

EXIT_USAGE = 2

# The operating system's own "that file is not there / not readable" errors are user
# errors too: their message already names the path.
OS_USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                                   PermissionError)


class UserError(Exception):
    """An input is wrong, not the code; the message says which input and how."""


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, (UserError, *OS_USER_ERRORS))
