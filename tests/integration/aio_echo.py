"""An asyncio echo server (streams API), unmodified, for the integration tests.

    aio_echo.py PORT
"""

from __future__ import annotations

import asyncio
import sys


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            d = await reader.read(1 << 16)
            if not d:
                break
            writer.write(d)
            await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


async def main(port: int) -> None:
    srv = await asyncio.start_server(_handle, "0.0.0.0", port, reuse_address=True, backlog=128)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
