"""The HTTP plumbing under the loopback server: a threaded listener and a request handler, nothing API-specific.

The standard library's ``ThreadingHTTPServer`` is close to what a test double
needs but not quite: it looks up the host's FQDN on bind, cannot stop without
polling, and leaves stalled handler threads behind on close.  This module
holds the adjusted server (one daemon thread per connection, a wake-up socket
to stop at once, every open connection shut down on abort) and the handler's
byte-level helpers (request body, JSON answer, chunked writes).  What a request
*means* is left to the ``on_request`` callable it is given.
"""

from __future__ import annotations

import itertools
import json
import logging
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__package__)  # "django_agent_session.testing.loopback", one logger for the package

_REASON_PHRASES: dict[int, str] = {529: "Site Overloaded"}

_CONNECTION_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout)


class ConnectionDropped(Exception):
    """Raised inside a handler to abandon the current response and close the socket."""


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` handing each request to ``on_request`` and each answering failure to ``on_error``."""

    daemon_threads = True
    #: socketserver's default listen backlog is 5: a burst of new connections (every request
    #: is one, see LoopbackHandler) beyond it had its SYNs dropped and retried a second later
    request_queue_size = 256
    block_on_close = False  # stop() joins the handler threads itself, with a deadline
    timeout = 0.0  # handle_request() never waits: serve() only calls it once a connection is pending

    def __init__(
        self,
        address: tuple[str, int],
        *,
        on_request: Callable[[LoopbackHandler], None],
        on_error: Callable[[BaseException], None],
        keep_alive: bool = False,
    ) -> None:
        self.on_request = on_request
        self.on_error = on_error
        #: serve further requests on a connection after a complete answer (see LoopbackHandler)
        self.keep_alive = keep_alive
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._closing = False
        self._thread_ids = itertools.count(1)
        self._serving = True
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            super().__init__(address, LoopbackHandler)
        except BaseException:
            self._close_wakeup()
            raise

    def serve(self) -> None:
        """Accept connections until :meth:`stop_serving`; unlike ``serve_forever`` it stops without polling."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while self._serving:
                for key, _ in selector.select():
                    if key.fileobj is self and self._serving:
                        self.handle_request()  # returns at once: the socket is ready and `timeout` is 0

    def stop_serving(self) -> None:
        self._serving = False
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def server_close(self) -> None:
        super().server_close()
        self._close_wakeup()

    def _close_wakeup(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind() calls socket.getfqdn(), a reverse DNS lookup
        # that can take seconds on machines without a resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"loopback-messages-handler-{next(self._thread_ids)}",
            daemon=True,
        )
        with self._conn_lock:
            if self._closing:
                self.shutdown_request(request)
                return
            self._connections.add(request)
            self._handler_threads.add(thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._connections.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("loopback server: error while handling %s", client_address, exc_info=True)

    def abort_connections(self) -> list[threading.Thread]:
        """Refuse new connections, unblock every open one; return the handler threads."""
        with self._conn_lock:
            self._closing = True
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for conn in connections:
            _shutdown(conn)
        return threads


class LoopbackHandler(BaseHTTPRequestHandler):
    """A request answered by the server's ``on_request``; unexpected failures close the socket.

    By default one request per connection (every answer says ``Connection: close``), so each
    request of a test starts on a fresh connection. With the server's ``keep_alive``, a
    connection serves further requests after a complete answer, as the real API's does, unless
    the client asks to close it; a dropped or failed answer still closes it.
    """

    protocol_version = "HTTP/1.1"
    #: TCP_NODELAY, as API servers set it: on a kept-alive connection, Nagle's algorithm held a
    #: streamed chunk until the client's delayed ACK of the previous one (up to 40 ms)
    disable_nagle_algorithm = True
    server_version = "LoopbackMessages/1.0"
    sys_version = ""
    timeout = 60  # socket timeout, so an idle or silent client cannot pin a thread forever
    server: LoopbackHTTPServer

    def do_POST(self) -> None:
        if not self.server.keep_alive:
            self.close_connection = True  # every answer says Connection: close
        try:
            self.server.on_request(self)
        except ConnectionDropped:
            self._drop()
        except _CONNECTION_ERRORS:
            self.close_connection = True  # mid-answer: the stream is out of step
            logger.debug("loopback server: client went away", exc_info=True)
        except Exception as exc:  # a bug here must not pass silently: surface it via server.errors
            logger.exception("loopback server: failed while answering %s %s", self.command, self.path)
            self.server.on_error(exc)
            self._drop()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("loopback server: " + format, *args)

    def _drop(self) -> None:
        self.close_connection = True
        _shutdown(self.connection)

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def start_response(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        self.send_response(status, _REASON_PHRASES.get(status))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def send_json(self, status: int, payload: Any, headers: Sequence[tuple[str, str]]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.start_response(
            status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers],
        )
        self.wfile.write(data)
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _shutdown(conn: socket.socket) -> None:
    """Shut both directions of ``conn``, ignoring a socket that is already gone."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
