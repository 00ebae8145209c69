"""The gRPC client of tests/grpc.rs, run as the child of `keyward run`: it
reaches the server through the proxy from the environment and trusts the
CA bundle `keyward run` names in GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, as any
grpcio program would.

Usage: python3 client.py PORT LOG CALL [insecure]. Prints its environment, then what
the call returned, one `KEY value` line each.
"""
import os
import sys
import threading
import time

import grpc

port, log_file, call = sys.argv[1:4]
print("ENVIRON", dict(os.environ), flush=True)
if sys.argv[4:] == ["insecure"]:
    channel = grpc.insecure_channel("localhost:" + port)
else:
    channel = grpc.secure_channel("localhost:" + port, grpc.ssl_channel_credentials())
DEADLINE = 20


def method(kind, name):
    return getattr(channel, kind)("/kw.Test/" + name)


def note(line):
    with open(log_file, "a") as f:
        f.write(line + "\n")


def wait_for_line(line, timeout=10):
    """Blocks until the server has logged `line`; fails the call if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(log_file) and line in open(log_file).read().splitlines():
            return
        time.sleep(0.01)
    never(line)


def never(what):
    """Ends the process (from any thread): what was waited for never came."""
    print("NEVER", what, flush=True)
    os._exit(3)


def show_error(e):
    print("CODE", e.code().name)
    print("DETAILS", e.details())


def unary():
    print("REPLY", method("unary_unary", "Unary")(b"hello", timeout=DEADLINE).decode())


def client_stream():
    def messages():
        for i in range(3):
            yield b"m%d" % i
            # A buffering proxy holds m0 until the stream ends: never logged.
            wait_for_line("GOT m%d" % i)

    print("REPLY", method("stream_unary", "ClientStream")(messages(), timeout=DEADLINE).decode())


def server_stream():
    for part in method("unary_stream", "ServerStream")(b"go", timeout=DEADLINE):
        print("PART", part.decode(), flush=True)
        note("READ " + part.decode())


def bidi():
    # Each message goes only after the answer to the one before: a proxy
    # that buffers either direction stalls here until the deadline.
    outbox = []
    ready = threading.Condition()

    def messages():
        for i in range(3):
            with ready:
                if not ready.wait_for(lambda: len(outbox) == i, timeout=10):
                    never("answer %d" % (i - 1))
            yield b"ping-%d" % i

    for answer in method("stream_stream", "Bidi")(messages(), timeout=DEADLINE):
        print("ANSWER", answer.decode(), flush=True)
        with ready:
            outbox.append(answer)
            ready.notify()


def fail():
    try:
        method("unary_unary", "Fail")("précondition: 100% failed / ¿sí?".encode(), timeout=DEADLINE)
    except grpc.RpcError as e:
        show_error(e)


def deadline():
    try:
        method("unary_unary", "Slow")(b"", timeout=1.5)
    except grpc.RpcError as e:
        show_error(e)


def cancel():
    # No deadline: only the cancellation can end the call before the
    # server gives up waiting (and logs active=True).
    future = method("unary_unary", "Slow").future(b"")
    wait_for_line("SLOW started")
    print("CANCELLED", future.cancel(), flush=True)
    for _ in range(3000):
        ended = [l for l in open(log_file).read().splitlines() if l.startswith("SLOW ended")]
        if ended:
            print("SERVER", ended[0])
            return
        time.sleep(0.01)
    never("SLOW ended")


def placeholder():
    token = os.environ["LOCAL_TOKEN"]
    reply = method("unary_unary", "Unary")(b"p", metadata=(("x-token", token),), timeout=DEADLINE)
    print("REPLY", reply.decode())


def leak_token():
    """A hostile child: its run token in metadata, then in messages."""
    token = os.environ["HTTPS_PROXY"].split("run:")[1].split("@")[0]
    print("TOKEN", token)
    try:
        method("unary_unary", "Unary")(b"x", metadata=(("x-leak", token.upper()),), timeout=DEADLINE)
        print("METADATA sent")
    except grpc.RpcError as e:
        print("METADATA", e.code().name)
        print("METADATA_DETAILS", e.details())
    messages = iter([b"note " + token.encode(), b"ordinary"])
    reply = method("stream_unary", "ClientStream")(messages, timeout=DEADLINE)
    print("REPLY", reply.decode())


def echo_auth():
    reply, call = method("unary_unary", "EchoAuth").with_call(b"", timeout=DEADLINE)
    print("REPLY", reply.decode())
    print("INITIAL", dict(call.initial_metadata()).get("x-echo-auth"))
    print("TRAILER", dict(call.trailing_metadata()).get("x-echo-auth"))
    print("STATUS", call.code().name)


try:
    globals()[call]()
except grpc.RpcError as e:
    show_error(e)
    sys.exit(2)
