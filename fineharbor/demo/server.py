"""A quiet loopback HTTP server for the demo's URL-list source.

It serves one directory, answers 404 for missing files and adds ``X-Robots-Tag: noai`` to files
whose name contains ``noai`` (the demo's planted opt-outs). Standard library only.
"""

from __future__ import annotations

import functools
import posixpath
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    server_version = "fineharbor-demo/1"
    sys_version = ""

    def end_headers(self) -> None:
        name = posixpath.basename(urllib.parse.urlsplit(self.path).path)
        if "noai" in name and getattr(self, "_status", 200) < 400:
            self.send_header("X-Robots-Tag", "noai")
        super().end_headers()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def list_directory(self, path):  # no directory listings
        self.send_error(404, "Not Found")
        return None

    def log_message(self, format: str, *args) -> None:  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        # a client that hangs up mid-response (the downloader stops reading an oversized or
        # opted-out image) is expected, not a traceback on the demo's terminal
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_directory(directory: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``directory`` over HTTP on ``host:port`` while the block runs; yields the base URL.

    Prefer a fixed port chosen by the caller (URLs are baked into the demo's URL list);
    ``port=0`` picks a free one.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot serve {directory}: not a directory")
    handler = functools.partial(_Handler, directory=str(directory))
    server = _Server((host, port), handler)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fineharbor-demo-http", daemon=True
    )
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    try:
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
