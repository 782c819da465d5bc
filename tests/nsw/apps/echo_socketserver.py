"""Echo server on socketserver (Python 3.11 stdlib), run under the NSW shim.

argv: port [scratch-file]. Each chunk is also written to and read back from
the scratch file (unprotected fds the shim must not report).
"""

import os
import socketserver
import sys

PORT = int(sys.argv[1])
SCRATCH = sys.argv[2] if len(sys.argv) > 2 else None


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        fd = os.open(SCRATCH, os.O_RDWR | os.O_CREAT | os.O_TRUNC) if SCRATCH else None
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                if fd is not None:
                    os.pwrite(fd, data, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.write(fd, data)
                    os.lseek(fd, 0, os.SEEK_SET)
                    assert os.read(fd, len(data)) == data
                self.request.sendall(data)
        finally:
            if fd is not None:
                os.close(fd)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


with Server(("127.0.0.1", PORT), Echo) as srv:
    srv.serve_forever()
