"""A program's side of keyward's fd broker (protocol 1), standard library only.

Run under `keyward run --broker fd --grant G -- python3 client.py HOST PATH`:
the program has no proxy URL, no token and no CA in its environment, only
KEYWARD_BROKER_FD (3). Each dial sends one byte 0x01 and gets back 0x01 with
one descriptor: a stream on which the program speaks plain HTTP/1.1, with
Host naming the grant's host. keyward forwards it over TLS with the grant's
credential injected and the response scrubbed. 0xFF means the dial was
refused; EOF (or EPIPE on the send) means the broker is gone.
"""

import http.client
import os
import socket
import sys


def broker():
    """The broker socket the keyward wrapper gave this process."""
    return socket.socket(fileno=int(os.environ["KEYWARD_BROKER_FD"]))


def dial(sock):
    """One fresh stream from the broker."""
    try:
        sock.send(b"\x01")
    except BrokenPipeError:
        raise ConnectionError("the keyward broker is gone: the daemon stopped or the run ended") from None
    msg, fds, _flags, _addr = socket.recv_fds(sock, 2, 1)
    if not msg:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("the keyward broker is gone (EOF): the daemon stopped or the run ended")
    if msg != b"\x01" or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("the keyward broker refused the dial (0xFF)")
    return socket.socket(fileno=fds[0])


class BrokerConnection(http.client.HTTPConnection):
    """http.client over a broker stream: `Host` is the grant's host."""

    def __init__(self, host, sock):
        super().__init__(host)
        self._broker = sock

    def connect(self):
        self.sock = dial(self._broker)


def main():
    host, path = sys.argv[1], sys.argv[2]
    conn = BrokerConnection(host, broker())
    conn.request("GET", path)
    resp = conn.getresponse()
    print(resp.status)
    for name, value in resp.getheaders():
        print(f"{name}: {value}")
    print()
    print(resp.read().decode(errors="replace"))


if __name__ == "__main__":
    main()
