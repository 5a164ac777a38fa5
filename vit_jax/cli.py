"""What every vit_jax command-line tool shares: quiet TensorFlow logs, one-line errors, exit codes.

Exit codes: 0 success, 1 the work failed (e.g. a NaN loss, no readable image), 2 bad input (a
missing file, a wrong key, an unreachable download) with one line `prog: error: message`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# Errors that mean "the input is wrong": reported in one line, no traceback.
USER_ERRORS = (ValueError, KeyError, OSError)


def quiet_tensorflow() -> None:
    """TensorFlow (tf.data, image decoding) logs C++ chatter unless told not to, before import."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def error_message(e: BaseException) -> str:
    """The text of `e` on one line (KeyError's repr quotes are dropped)."""
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    return ' '.join(str(message).split())


def run_cli(prog: str, main: Callable[[], int | None]) -> int:
    """Runs `main()`, turning user errors into `prog: error: ...` and exit code 2."""
    quiet_tensorflow()
    try:
        return main() or 0
    except USER_ERRORS as e:
        print(f'{prog}: error: {error_message(e)}', file=sys.stderr)
        return 2
