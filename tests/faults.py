"""Fault injection for the CLIs: a process whose file writes fail past a size, as on a full disk."""

import sys


def full_disk(limit_bytes: int, module: str, *args: str) -> list[str]:
    """argv running `python -m module args` with writes over `limit_bytes` failing (RLIMIT_FSIZE:
    EFBIG, 'File too large', what a full disk does to a write; SIGXFSZ ignored). The limit is set
    inside the child, so nothing forks a multithreaded test process."""
    setup = ('import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
             f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); '
             f'sys.argv = [{module!r}] + sys.argv[1:]; runpy.run_module({module!r}, run_name="__main__")')
    return [sys.executable, '-c', setup, *args]
