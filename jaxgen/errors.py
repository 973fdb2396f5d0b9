"""Errors a user can fix: the CLIs print them as one line (no traceback) and exit with status 2."""


class UserError(Exception):
  """Bad input: the message names the problem and the fix."""
