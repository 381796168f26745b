"""`chain` in Python: calls another function through the platform and reports what it
answered, as the Rust `chain` in examples/functions does - with an ordinary outgoing
`wasi:http` request to `http://turnpike<PATH>` (the worker adds who is calling; the guest
sends no key or token).

`?to=PATH` (percent-decoded, starting with `/`) names the callee; `via=HOST` sends to
`http://HOST<PATH>` instead (`APP.turnpike` reaches app APP's routes; any other host is
refused by the worker). The request's method and body are passed on, so a `POST` of JSON
reaches a JSON function. The answer has the callee's status, and the body

    called PATH: STATUS, ran at CLASS
    <the callee's body>

where CLASS is the callee's `x-turnpike-class` response header (the class the platform ran
it at) or `-`. A missing or bad `to` gets `400`; a call that failed gets `502` naming the
error."""

from urllib.parse import parse_qs, unquote, urlsplit

from wit_world import exports
from wit_world.imports import outgoing_handler, streams
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    Method_Post,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
)
from componentize_py_types import Err, Ok

BODY_BYTES_MAX = 1 << 20


class BadRequest(Exception):
    pass


class CallFailed(Exception):
    pass


def target(path_with_query: str) -> tuple:
    """`(path, authority)` of the call this request asks for."""
    query = parse_qs(urlsplit(path_with_query).query, keep_blank_values=True)
    for name in ("to", "via"):
        if len(query.get(name, [])) > 1:
            raise BadRequest(f"query parameter `{name}` given more than once")
    if "to" not in query:
        raise BadRequest("missing query parameter `to` (e.g. ?to=/hello)")
    path = unquote(query["to"][0], errors="strict")
    if not path.startswith("/"):
        raise BadRequest(f"`to` must be a path starting with `/`, got {path!r}")
    return path, query.get("via", ["turnpike"])[0]


def read_all(body) -> bytes:
    data = bytearray()
    with body.stream() as stream:
        while True:
            try:
                data += stream.blocking_read(65536)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    return bytes(data)
                raise CallFailed(f"reading a body: {e.value}")
            if len(data) > BODY_BYTES_MAX:
                raise CallFailed(f"a body is larger than {BODY_BYTES_MAX} bytes")


def call(authority: str, path: str, body: bytes) -> tuple:
    """Sends the request (a `POST` of `body` if there is one, else a `GET`) and waits for the
    whole response: `(status, class, body)`."""
    headers = [("content-type", b"application/json")] if body else []
    request = OutgoingRequest(Fields.from_list(headers))
    request.set_method(Method_Post() if body else Method_Get())
    request.set_scheme(Scheme_Http())
    try:
        request.set_authority(authority)
        request.set_path_with_query(path)
    except Err:
        raise CallFailed(f"bad authority or path {authority!r} {path!r}")
    outgoing = request.body()
    if body:
        with outgoing.write() as stream:
            stream.blocking_write_and_flush(body)
    OutgoingBody.finish(outgoing, None)
    try:
        pending = outgoing_handler.handle(request, None)
    except Err as e:
        raise CallFailed(str(e.value))
    with pending.subscribe() as ready:
        ready.block()
    answer = pending.get()
    if answer is None or isinstance(answer, Err) or isinstance(answer.value, Err):
        raise CallFailed(f"no response: {answer}")
    response = answer.value.value
    classes = response.headers().get("x-turnpike-class")
    ran_at = classes[0].decode() if classes else "-"
    return response.status(), ran_at, read_all(response.consume())


def respond(response_out: ResponseOutparam, status: int, text: bytes) -> None:
    response = OutgoingResponse(
        Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
    )
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        stream.blocking_write_and_flush(text)
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        try:
            path, authority = target(request.path_with_query() or "/")
        except (BadRequest, UnicodeDecodeError) as e:
            return respond(response_out, 400, f"{e}\n".encode())
        try:
            body = read_all(request.consume())
            status, ran_at, answer = call(authority, path, body)
        except CallFailed as e:
            return respond(response_out, 502, f"calling {path}: {e}\n".encode())
        respond(response_out, status, f"called {path}: {status}, ran at {ran_at}\n".encode() + answer)
