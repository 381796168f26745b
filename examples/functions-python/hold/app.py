"""`hold` in Python: builds `?mb=N` megabytes of data (default 8) from a seed, spins on the CPU
for `?ms=M` milliseconds (default 200) so it can be preempted and swapped out meanwhile, then
checks its data is still what it built and answers `200` with its checksum, or `500` if it
changed. The swap test runs it under a preempting top-class function."""

import time
import zlib
from urllib.parse import parse_qs, urlparse

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok


def build(mb: int) -> list:
    # Distinct per chunk, so a page swapped back to the wrong place shows.
    return [bytes((i * 131 + j) % 251 for j in range(4096)) * 256 for i in range(mb)]


def checksum(chunks: list) -> int:
    total = 0
    for chunk in chunks:
        total = zlib.crc32(chunk, total)
    return total


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        query = parse_qs(urlparse(request.path_with_query() or "/").query)
        mb = int(query.get("mb", ["8"])[0])
        ms = int(query.get("ms", ["200"])[0])
        chunks = build(mb)
        before = checksum(chunks)
        until = time.monotonic() + ms / 1000
        spins = 0
        while time.monotonic() < until:
            spins += 1
        after = checksum(chunks)
        status = 200 if before == after else 500
        text = f"mb={mb} checksum={after:08x} intact={before == after}\n".encode()
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        response.set_status_code(status)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text)
        OutgoingBody.finish(body, None)
