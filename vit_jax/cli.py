"""What every vit_jax command-line tool shares: quiet logs, one-line errors, exit codes, arguments.

Exit codes: 0 success; 1 the work failed (a non-finite loss, no readable image); 2 bad input
(`vit_jax.errors.UserError`: a missing or malformed file, a wrong config value, an unreachable
download) or an OS error at the file boundary, printed as one line `prog: error: message`;
75 (EX_TEMPFAIL) vit-train was preempted (SIGTERM) after saving a checkpoint: run it again to
resume. Any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable

from vit_jax import images
from vit_jax.errors import UserError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75   # EX_TEMPFAIL (sysexits.h): try again later


def quiet_logs() -> None:
    """TensorFlow (tf.data, image decoding) and absl log C++/Python chatter unless told not to."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    logging.getLogger('absl').setLevel(logging.WARNING)


class _BackgroundFailures(logging.Filter):
    """Drops the tracebacks that Orbax's and asyncio's background threads log for a failed write:
    the failure reaches the main thread, which reports it once, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        background = f'{os.sep}orbax{os.sep}' in record.pathname or 'never retrieved' in record.getMessage()
        return not background


def _closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed'


def quiet_background_failures() -> None:
    """Background-thread noise of a failed async checkpoint (Orbax logs, asyncio "never retrieved",
    tensorstore callbacks into Orbax's closed event loop) is dropped: the failure itself reaches the
    main thread and is reported there once."""
    for name in ('absl', 'asyncio'):
        logging.getLogger(name).addFilter(_BackgroundFailures())
    warnings.filterwarnings('ignore', message="coroutine '.*' was never awaited", category=RuntimeWarning)
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda t, e, tb: None if _closed_loop(e) else excepthook(t, e, tb)
    sys.unraisablehook = lambda u: None if _closed_loop(u.exc_value) else unraisablehook(u)


def error_message(e: BaseException) -> str:
    """The text of `e` on one line."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f'{e.filename}: {e.strerror}'
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return ' '.join(text.split()) or type(e).__name__


def run_cli(prog: str, main: Callable[[], int | None], *, background_threads: bool = False) -> int:
    """Runs `main()`; a UserError or OSError becomes `prog: error: ...` and exit code 2.

    With `background_threads` (vit-train: Orbax saves asynchronously) their failure logs are
    dropped: the main thread reports the failure once.
    """
    quiet_logs()
    if background_threads:
        quiet_background_failures()
    try:
        return main() or 0
    except (UserError, OSError) as e:
        print(f'{prog}: error: {error_message(e)}', file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's help ends with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        unset = action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS)
        if action.option_strings and not unset and '%(default)' not in text and 'default:' not in text:
            text += ' (default: %(default)s)'
        return text


def positive_int(text: str) -> int:
    """argparse type of counts and sizes (--batch-size, --image-size, --num-heads, ...): an int >= 1,
    else the usual one-line usage error naming the flag (not a traceback from deep inside)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
    return value


def non_negative_float(text: str) -> float:
    """argparse type of weights such as --l2-reg: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number >= 0, got {text!r}') from None
    if not 0 <= value < float('inf'):
        raise argparse.ArgumentTypeError(f'expected a finite number >= 0, got {text}')
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A command-line mistake is one line, as every other bad input (`--help` shows the usage)."""
        self.exit(EXIT_BAD_INPUT, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def argument_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of every vit_jax CLI: errors in one line, no abbreviated options (`--image` is not
    `--image-size`), defaults shown in --help."""
    return _Parser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                   formatter_class=_HelpFormatter)


def add_max_pixels_arg(parser: argparse.ArgumentParser) -> None:
    """--max-image-pixels: the decompression-bomb bound of every CLI that reads image files."""
    parser.add_argument('--max-image-pixels', type=positive_int, default=images.MAX_PIXELS, metavar='N',
                        help='refuse image files that declare more pixels (per frame), before decoding them')
