"""How every entry point ends on an error: one line on stderr, exit status 2, no traceback.

    if __name__ == "__main__":
        sys.exit(guarded(main))

Each CLI already reports the errors it expects (bad config, missing file) as one line; this
catches the rest, so a user never gets a traceback for bad input that a module did not foresee
(a damaged file deep in a library). ``--debug`` anywhere on the command line (or VIMI_DEBUG=1)
re-raises instead, with the full traceback, for bug reports.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

DEBUG_FLAG = "--debug"


def one_line(e: BaseException) -> str:
    """The exception's message on one line (KeyError's repr quotes aside), prefixed by its type when bare."""
    text = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
    return text or type(e).__name__


def guarded(main: Callable[..., int], argv: Sequence[str] | None = None, *args, prog: str | None = None) -> int:
    """``main(argv, *args)`` with ``--debug`` removed from argv; any exception becomes one line and 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get("VIMI_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    prog = prog or Path(sys.argv[0]).name
    try:
        return main(*args, argv) if args else main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"{prog}: error: {one_line(e)} ({type(e).__name__}; {DEBUG_FLAG} shows the traceback)", file=sys.stderr)
        return 2
