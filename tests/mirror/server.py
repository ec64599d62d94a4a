"""Serve the offline gVisor release mirror on 127.0.0.1, with fault injection.

Usage: server.py --root DIR [--port N] [--log FILE] [--bind 127.0.0.1]
                 [--tls-cert FILE --tls-key FILE] [--basic-auth USER:PASSWORD]

  --port defaults to $CONTAINERD_GVISOR_MIRROR_PORT, else 18080; 0 picks a free
  port. Once listening, one line "serving DIR on http://127.0.0.1:PORT/" (https
  with TLS) goes to stdout. Only 127.0.0.1 is accepted as bind address.
  --tls-cert and --tls-key (PEM files: the certificate chain and its key) serve
  HTTPS instead of HTTP; the handshake happens in the request's own thread.
  --basic-auth makes every request, /_control/ included, need HTTP basic
  authentication with these credentials: without the Authorization header, or
  with other credentials, the answer is 401 with
  `WWW-Authenticate: Basic realm="gvisor-mirror"`. These are test credentials:
  they show in the process list, and the access log records the 401 (never a
  password or the Authorization header).

GET and HEAD serve regular files under DIR (symlinks are followed while they
stay inside DIR); anything else is 404. Each request is logged to --log as one
JSON line: {"time", "method", "path", "status", "bytes", "fault"}, where bytes
counts the body bytes actually sent.

Faults are set at run time over HTTP (these requests are not logged):
  PUT    /_control/faults  body {"/path": {"kind": K, ...}, ...} replaces all
  DELETE /_control/faults  clears them
  GET    /_control/faults  returns them, each with "hits" (requests it changed)
  GET    /_control/health  200 "ok"
Kinds: "404"; "500"; "stall" with "seconds" (sleep before the headers, then
serve normally); "truncate" (full Content-Length, half the body, then close);
"corrupt" (same length, bytes flipped); "bad_sha512" (body
"not-a-checksum  <name>\\n"); "trickle" with "bytes_per_second" (the whole file,
that slowly: each read gets an answer, the download never ends in time);
"redirect_loop" (302 back to the same path). Any fault takes an optional
"count": only the first N matching requests get it, later ones are served normally.
"""

import argparse
import base64
import binascii
import datetime
import hmac
import http.server
import json
import os
import posixpath
import signal
import ssl
import sys
import threading
import time
import urllib.parse

KINDS = {"404", "500", "stall", "truncate", "corrupt", "bad_sha512", "trickle", "redirect_loop"}
CHUNK = 64 * 1024
REALM = "gvisor-mirror"
HANDSHAKE_TIMEOUT = 10  # seconds a client may take over the TLS handshake


class Faults:
    """The fault table, shared by all request threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.table = {}

    @staticmethod
    def validate(body):
        if not isinstance(body, dict):
            raise ValueError("faults must be a JSON object of path -> fault")
        table = {}
        for path, fault in body.items():
            if not isinstance(fault, dict) or fault.get("kind") not in KINDS:
                raise ValueError(f"{path}: kind must be one of {sorted(KINDS)}")
            fault = dict(fault)
            fault.pop("hits", None)
            count = fault.get("count")
            if count is not None and (not isinstance(count, int) or count < 0):
                raise ValueError(f"{path}: count must be an integer >= 0")
            seconds = fault.get("seconds", 0)
            if not isinstance(seconds, (int, float)) or seconds < 0:
                raise ValueError(f"{path}: seconds must be a number >= 0")
            fault["hits"] = 0
            table["/" + path.lstrip("/")] = fault
        return table

    def replace(self, table):
        with self.lock:
            self.table = table

    def snapshot(self):
        with self.lock:
            return {path: dict(fault) for path, fault in self.table.items()}

    def take(self, path):
        """Return the fault that applies to this request of path, or None."""
        with self.lock:
            fault = self.table.get(path)
            if fault is None:
                return None
            count = fault.get("count")
            if count is not None and fault["hits"] >= count:
                return None
            fault["hits"] += 1
            return dict(fault)


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "gvisor-test-mirror"
    sys_version = ""

    def log_message(self, format, *args):  # quiet stderr
        pass

    def send_response(self, code, message=None):
        self.status = code
        super().send_response(code, message)

    def write(self, data):
        self.wfile.write(data)
        self.sent += len(data)

    # --- helpers -------------------------------------------------------

    def url_path(self):
        return urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)

    def access_log(self, fault):
        log = self.server.log_file
        if log is None:
            return
        line = json.dumps({
            "time": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": self.command,
            "path": self.url_path(),
            "status": self.status,
            "bytes": self.sent,
            "fault": fault["kind"] if fault else None,
        })
        with self.server.log_lock:
            with open(log, "a", encoding="utf-8") as out:
                out.write(line + "\n")

    def send_body(self, status, body, content_type="text/plain; charset=utf-8",
                  head=False, headers=()):
        """Send a whole small response."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.write(body)

    def resolve(self, path):
        """The real path of a regular file under root for path, or None."""
        if "\0" in path:
            return None
        root = os.path.realpath(self.server.root)
        real = os.path.realpath(os.path.join(root, path.lstrip("/")))
        if os.path.commonpath([root, real]) != root or not os.path.isfile(real):
            return None
        return real

    def authorized(self):
        """Whether the request carries the server's basic-auth credentials (or none are needed)."""
        expected = self.server.credentials
        if expected is None:
            return True
        scheme, _ignored, token = self.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, expected)

    # --- control -------------------------------------------------------

    def control(self, path):
        faults = self.server.faults
        if path == "/_control/health" and self.command in ("GET", "HEAD"):
            self.send_body(200, b"ok", head=self.command == "HEAD")
        elif path == "/_control/faults" and self.command == "GET":
            self.send_json(200, faults.snapshot())
        elif path == "/_control/faults" and self.command == "DELETE":
            faults.replace({})
            self.send_json(200, {})
        elif path == "/_control/faults" and self.command == "PUT":
            length = int(self.headers.get("Content-Length") or 0)
            try:
                table = Faults.validate(json.loads(self.rfile.read(length) or b"{}"))
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                self.send_json(400, {"error": str(err)})
                return
            faults.replace(table)
            self.send_json(200, faults.snapshot())
        else:
            self.send_body(404, b"no such control\n")

    def send_json(self, status, obj):
        self.send_body(status, (json.dumps(obj, sort_keys=True) + "\n").encode(),
                       "application/json")

    # --- mirror --------------------------------------------------------

    def serve(self):
        self.status, self.sent = None, 0
        path = self.url_path()
        is_control = path == "/_control" or path.startswith("/_control/")
        if not self.authorized():
            self.send_body(401, b"authentication required\n", head=self.command == "HEAD",
                           headers=[("WWW-Authenticate", f'Basic realm="{REALM}"')])
            self.close_connection = True  # any request body stays unread
            if not is_control:
                self.access_log(None)
            return
        if is_control:
            self.control(path)
            return
        if self.command not in ("GET", "HEAD"):
            self.send_body(405, b"method not allowed\n")
            self.access_log(None)
            return
        head = self.command == "HEAD"
        fault = self.server.faults.take(path)
        kind = fault["kind"] if fault else None
        try:
            if kind == "stall":
                time.sleep(fault.get("seconds", 0))
            if kind == "404":
                self.send_body(404, b"not found (injected)\n", head=head)
            elif kind == "500":
                self.send_body(500, b"internal error (injected)\n", head=head)
            elif kind == "redirect_loop":
                self.send_response(302)
                self.send_header("Location", path)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif kind == "bad_sha512":
                name = posixpath.basename(path)
                if name.endswith(".sha512"):
                    name = name[: -len(".sha512")]
                self.send_body(200, f"not-a-checksum  {name}\n".encode(), head=head)
            else:
                self.send_file(path, kind, head, fault.get("bytes_per_second", 0) if fault else 0)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.access_log(fault)

    def send_file(self, path, kind, head, rate=0):
        real = self.resolve(path)
        if real is None:
            self.send_body(404, b"not found\n", head=head)
            return
        size = os.path.getsize(real)
        ctype = ("text/plain; charset=utf-8" if real.endswith(".sha512")
                 else "application/octet-stream")
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(size))
        if kind == "truncate":
            self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        limit = size // 2 if kind == "truncate" else size
        # Byte offsets that "corrupt" flips: first, middle and last.
        flips = {0, size // 2, size - 1} if kind == "corrupt" and size else set()
        done = 0
        with open(real, "rb") as src:
            while done < limit:
                chunk = src.read(min(CHUNK if kind != "trickle" else max(1, int(rate)), limit - done))
                if kind == "trickle":
                    time.sleep(1)
                if not chunk:
                    break
                if flips:
                    data = bytearray(chunk)
                    for pos in flips:
                        if done <= pos < done + len(data):
                            data[pos - done] ^= 0xFF
                    chunk = bytes(data)
                self.write(chunk)
                done += len(chunk)
        if kind == "truncate":
            self.wfile.flush()
            self.close_connection = True

    do_GET = do_HEAD = do_PUT = do_DELETE = do_POST = serve


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    ssl_context = None  # an ssl.SSLContext to serve HTTPS
    credentials = None  # b"user:password" to require basic authentication

    def finish_request(self, request, client_address):
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        # The TLS handshake runs here, in the request's thread, so a slow or failing client
        # never holds up the accept loop; a failed handshake ends in handle_error.
        request.settimeout(HANDSHAKE_TIMEOUT)
        tls = self.ssl_context.wrap_socket(request, server_side=True)  # takes over request's socket
        try:
            tls.settimeout(None)
            super().finish_request(tls, client_address)
        finally:
            self.shutdown_request(tls)

    def handle_error(self, request, client_address):
        pass  # clients that hang up, or refuse the certificate, are expected here; keep stderr quiet


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Serve the offline gVisor release mirror with fault injection.")
    parser.add_argument("--root", required=True, help="mirror folder to serve")
    parser.add_argument("--port", type=int,
                        default=int(os.environ.get("CONTAINERD_GVISOR_MIRROR_PORT", 18080)))
    parser.add_argument("--log", help="access log file (JSON lines)")
    parser.add_argument("--bind", default="127.0.0.1", help="only 127.0.0.1 is accepted")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    parser.add_argument("--basic-auth", metavar="USER:PASSWORD",
                        help="require HTTP basic authentication with these credentials")
    args = parser.parse_args(argv)
    if args.bind != "127.0.0.1":
        parser.error(f"refusing to bind {args.bind}: this server listens on 127.0.0.1 only")
    if not os.path.isdir(args.root):
        parser.error(f"--root {args.root} is not a folder")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.basic_auth is not None:
        user, colon, _password = args.basic_auth.partition(":")
        if not user or not colon:
            parser.error("--basic-auth wants USER:PASSWORD (a user name, then ':' and the password)")
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as err:
            parser.error(f"cannot load --tls-cert {args.tls_cert} / --tls-key {args.tls_key}: {err}")

    try:
        server = Server((args.bind, args.port), Handler)
    except OSError as err:
        print(f"server.py: cannot listen on {args.bind}:{args.port}: {err}", file=sys.stderr)
        return 1
    server.root = os.path.abspath(args.root)
    server.log_file = os.path.abspath(args.log) if args.log else None
    server.log_lock = threading.Lock()
    server.faults = Faults()
    server.ssl_context = ssl_context
    server.credentials = args.basic_auth.encode() if args.basic_auth is not None else None

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = server.server_address[1]
    scheme = "https" if ssl_context else "http"
    print(f"serving {server.root} on {scheme}://127.0.0.1:{port}/", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
