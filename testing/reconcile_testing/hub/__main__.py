"""`python -m reconcile_testing.hub --store DIR [--port 0] [--port-file FILE] [--rate MB/s]`: serve a store.

Prints the endpoint URL (and writes it to --port-file, for scripts that wait on it) so a demo can
`export HF_ENDPOINT=<url>`. Stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from . import LocalHub


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until interrupted; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m reconcile_testing.hub", description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, type=Path, help="folder of repos (see reconcile_testing.hub.repo)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file", type=Path, help="write the endpoint URL here once listening")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    ap.add_argument("--rate", type=float, metavar="MB/s",
                    help="cap each connection's file bodies at this many MB/s (10^6 bytes): a WAN stand-in")
    args = ap.parse_args(argv)
    if not args.store.is_dir():
        print(f"error: store {args.store} is not a folder", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    rate = args.rate * 1e6 if args.rate else None
    with LocalHub(args.store, host=args.host, port=args.port, quiet=not args.verbose, rate_per_connection=rate) as hub:
        print(hub.url, flush=True)
        if args.port_file:
            tmp = args.port_file.with_name(args.port_file.name + f".{os.getpid()}.tmp")
            tmp.write_text(hub.url + "\n")
            os.replace(tmp, args.port_file)  # a waiting script never reads half a URL
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
