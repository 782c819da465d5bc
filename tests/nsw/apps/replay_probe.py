"""A nonblocking echo server that records every recv result, run under the shim.

argv: port results-file. Serves one connection: recv(1024) in a loop; on
BlockingIOError records "EAGAIN" and waits for readability; echoes data;
records "EOF" and closes at end of stream. One line per result, flushed.
"""

import select
import socket
import sys

port, out = int(sys.argv[1]), sys.argv[2]
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", port))
lst.listen(1)
conn, _ = lst.accept()
conn.setblocking(False)
with open(out, "w") as f:
    while True:
        try:
            data = conn.recv(1024)
        except BlockingIOError:
            f.write("EAGAIN\n")
            f.flush()
            select.select([conn], [], [], 5)
            continue
        if not data:
            f.write("EOF\n")
            f.flush()
            break
        f.write(f"{len(data)}\n")
        f.flush()
        conn.setblocking(True)
        conn.sendall(data)
        conn.setblocking(False)
conn.close()
