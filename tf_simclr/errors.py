"""One-line error messages: every user-facing error of this project is one line.

Imports nothing of tf_simclr, so any module may use it.
"""

import re


def first_line(error: Exception) -> str:
  """The first line of an error's message, without TensorFlow's op
  decorations ({{node ...}}, [Op:...]); the error's type when it has none.
  Every one-line message of this project is built from it."""
  text = getattr(error, 'message', None) or str(error)
  text = text.strip().splitlines()[0] if text.strip() else ''
  text = re.sub(r'\{\{[^}]*\}\}|\[Op:.*$', '', text)
  return text.strip() or type(error).__name__
