"""A gRPC test server over TLS for tests/grpc.rs: generic handlers on raw
bytes (no protoc), every call refused unless it carries the expected
`authorization` metadata.

Usage: python3 server.py CERT KEY LOG (CERT and KEY "-": cleartext
HTTP/2, as an insecure channel expects). The expected authorization value is
read from LOG.expect; what the server sees is appended to LOG, one line per
event, so a test can tell what reached the server and when. Prints its port
on its first line.
"""
import os
import sys
import threading
import time
from concurrent import futures

import grpc

cert_file, key_file, log_file = sys.argv[1:4]
with open(log_file + ".expect") as f:
    EXPECTED = f.read()
lock = threading.Lock()


def log(line):
    with lock, open(log_file, "a") as f:
        f.write(line + "\n")


def wait_for_line(line, timeout=10):
    """Blocks until LOG has `line` (written by the test's client)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lock:
            if os.path.exists(log_file) and line in open(log_file).read().splitlines():
                return True
        time.sleep(0.01)
    return False


def authorized(context):
    md = dict(context.invocation_metadata())
    if md.get("authorization") != EXPECTED:
        log("REFUSED authorization=%r" % md.get("authorization"))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid authorization metadata")
    log("METADATA " + " ".join("%s=%s" % kv for kv in sorted(md.items()) if kv[0] != "authorization"))
    return md


def unary(request, context):
    authorized(context)
    return b"echo:" + request


def client_stream(requests, context):
    authorized(context)
    got = []
    for message in requests:
        # The client sends its next message only after this line.
        log("GOT " + message.decode())
        got.append(message)
    return b",".join(got)


def server_stream(request, context):
    authorized(context)
    for i in range(3):
        yield b"part-%d" % i
        # The next part only once the client has read this one.
        if i < 2 and not wait_for_line("READ part-%d" % i):
            context.abort(grpc.StatusCode.ABORTED, "the client never read part-%d" % i)


def bidi(requests, context):
    authorized(context)
    for message in requests:
        log("GOT " + message.decode())
        yield b"re:" + message


def fail(request, context):
    authorized(context)
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, request.decode())


def slow(request, context):
    """Waits until the call ends; logs whether the server saw it cancelled."""
    authorized(context)
    # The client's deadline, from grpc-timeout (without one, grpcio says
    # None or a time centuries away).
    remaining = context.time_remaining()
    log("DEADLINE " + ("none" if remaining is None or remaining > 86400 else "%.0fs" % remaining))
    done = threading.Event()
    context.add_callback(done.set)
    log("SLOW started")
    done.wait(15)
    log("SLOW ended active=%s" % context.is_active())
    return b"late"


def echo_auth(request, context):
    """Sends the credential back in a trailer, initial metadata and the message."""
    md = authorized(context)
    # Compressed if the client accepts it: keyward asks for identity, and
    # decodes what comes compressed anyway.
    context.set_compression(grpc.Compression.Gzip)
    context.send_initial_metadata((("x-echo-auth", md["authorization"]),))
    context.set_trailing_metadata((("x-echo-auth", md["authorization"]),))
    return b"you sent: " + md["authorization"].encode()


# No request_deserializer or response_serializer: bytes in, bytes out.
handlers = grpc.method_handlers_generic_handler(
    "kw.Test",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "EchoAuth": grpc.unary_unary_rpc_method_handler(echo_auth),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
server.add_generic_rpc_handlers((handlers,))
if cert_file == "-":
    port = server.add_insecure_port("127.0.0.1:0")
else:
    with open(cert_file, "rb") as c, open(key_file, "rb") as k:
        credentials = grpc.ssl_server_credentials(((k.read(), c.read()),))
    port = server.add_secure_port("127.0.0.1:0", credentials)
server.start()
print(port, flush=True)
server.wait_for_termination()
