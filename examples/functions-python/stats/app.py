"""`stats` in Python: JSON in, JSON out. `POST` a JSON object with `text` (a string) and/or
`numbers` (an array of numbers); the answer is `200` with a JSON object holding, for `text`,
its word count, distinct words, the three most frequent words (ties alphabetical) and the
longest word, and for `numbers`, their count, sum, min, max, mean, median and population
standard deviation. A body that is not JSON, not an object, has neither field or a field of
the wrong type gets `400` with `{"error": "..."}` saying what is wrong. The JavaScript
`stats` in examples/functions-js answers the same JSON for the same body."""

import json
import math
import re
from collections import Counter

from wit_world import exports
from wit_world.imports import streams
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Err, Ok

# Larger bodies are refused (the platform bounds them too; this keeps the guest's own bound).
BODY_BYTES_MAX = 1 << 20
WORD = re.compile(r"[a-z0-9']+")


class BadRequest(Exception):
    pass


def read_body(request: IncomingRequest) -> bytes:
    body = request.consume()
    data = bytearray()
    with body.stream() as stream:
        while True:
            try:
                data += stream.blocking_read(65536)
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
            if len(data) > BODY_BYTES_MAX:
                raise BadRequest(f"body is larger than {BODY_BYTES_MAX} bytes")
    return bytes(data)


def text_stats(text: str) -> dict:
    words = WORD.findall(text.lower())
    counts = Counter(words)
    top = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:3]
    longest = max(words, key=len, default=None)
    return {
        "words": len(words),
        "distinct": len(counts),
        "top": [[w, c] for w, c in top],
        "longest": longest,
    }


def number_stats(numbers: list) -> dict:
    if not numbers:
        raise BadRequest("`numbers` is empty")
    for i, x in enumerate(numbers):
        # bool is an int in Python; JSON true is not a number.
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise BadRequest(f"`numbers[{i}]` is not a number: {json.dumps(x)}")
    n = len(numbers)
    ordered = sorted(numbers)
    mean = sum(numbers) / n
    middle = n // 2
    median = ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    variance = sum((x - mean) ** 2 for x in numbers) / n
    return {
        "count": n,
        "sum": sum(numbers),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": mean,
        "median": median,
        "stdev": math.sqrt(variance),
    }


def stats(body: bytes) -> dict:
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8")
    except json.JSONDecodeError as e:
        raise BadRequest(f"body is not JSON: {e}")
    if not isinstance(value, dict):
        raise BadRequest('body must be a JSON object, e.g. {"text": "a b a"}')
    unknown = sorted(set(value) - {"text", "numbers"})
    if unknown:
        raise BadRequest(f"unknown field `{unknown[0]}` (expected `text` and/or `numbers`)")
    if "text" not in value and "numbers" not in value:
        raise BadRequest("expected `text` (a string) and/or `numbers` (an array of numbers)")
    out = {}
    if "text" in value:
        if not isinstance(value["text"], str):
            raise BadRequest("`text` must be a string")
        out["text"] = text_stats(value["text"])
    if "numbers" in value:
        if not isinstance(value["numbers"], list):
            raise BadRequest("`numbers` must be an array of numbers")
        out["numbers"] = number_stats(value["numbers"])
    return out


def respond(response_out: ResponseOutparam, status: int, value: dict) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        stream.blocking_write_and_flush(json.dumps(value, separators=(",", ":")).encode() + b"\n")
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        try:
            respond(response_out, 200, stats(read_body(request)))
        except BadRequest as e:
            respond(response_out, 400, {"error": str(e)})
