"""Errors whose message is the whole story.

A `RunError` says in one line what went wrong and what to do (a refused
resume, a held workdir lock, a full disk). Entry points print its message
without a traceback; the cause, when there is one, stays attached as
`__cause__` for a developer who asks for it.
"""


class RunError(RuntimeError):
  """A run stopped (or refused to start) for a reason its message states in full."""
