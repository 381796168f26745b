// `stats` in JavaScript: JSON in, JSON out, answering exactly as the Python `stats` in
// examples/functions-python does. `POST` a JSON object with `text` (a string) and/or
// `numbers` (an array of numbers); the answer is `200` with a JSON object holding, for `text`,
// its word count, distinct words, the three most frequent words (ties alphabetical) and the
// longest word, and for `numbers`, their count, sum, min, max, mean, median and population
// standard deviation. A body that is not JSON, not an object, has neither field or a field of
// the wrong type gets `400` with `{"error": "..."}` saying what is wrong.

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.12';

// Larger bodies are refused (the platform bounds them too; this keeps the guest's own bound).
const BODY_BYTES_MAX = 1 << 20;

class BadRequest extends Error {}

// The whole body of an incoming request or response.
function readAll(incoming) {
  const body = incoming.consume();
  const stream = body.stream();
  const chunks = [];
  let length = 0;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = stream.blockingRead(65536n);
      } catch (e) {
        if (e.payload && e.payload.tag === 'closed') break;
        throw e;
      }
      chunks.push(chunk);
      length += chunk.length;
      if (length > BODY_BYTES_MAX) {
        throw new BadRequest(`body is larger than ${BODY_BYTES_MAX} bytes`);
      }
    }
  } finally {
    stream[Symbol.dispose]();
  }
  const all = new Uint8Array(length);
  let at = 0;
  for (const chunk of chunks) {
    all.set(chunk, at);
    at += chunk.length;
  }
  return all;
}

function textStats(text) {
  const words = text.toLowerCase().match(/[a-z0-9']+/g) || [];
  const counts = new Map();
  for (const w of words) counts.set(w, (counts.get(w) || 0) + 1);
  const top = [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .slice(0, 3);
  let longest = null;
  for (const w of words) if (longest === null || w.length > longest.length) longest = w;
  return { words: words.length, distinct: counts.size, top, longest };
}

function numberStats(numbers) {
  if (numbers.length === 0) throw new BadRequest('`numbers` is empty');
  numbers.forEach((x, i) => {
    if (typeof x !== 'number') {
      throw new BadRequest(`\`numbers[${i}]\` is not a number: ${JSON.stringify(x)}`);
    }
  });
  const n = numbers.length;
  const ordered = [...numbers].sort((a, b) => a - b);
  const sum = numbers.reduce((s, x) => s + x, 0);
  const mean = sum / n;
  const middle = Math.floor(n / 2);
  const median = n % 2 ? ordered[middle] : (ordered[middle - 1] + ordered[middle]) / 2;
  const variance = numbers.reduce((s, x) => s + (x - mean) ** 2, 0) / n;
  return {
    count: n,
    sum,
    min: ordered[0],
    max: ordered[n - 1],
    mean,
    median,
    stdev: Math.sqrt(variance),
  };
}

function stats(bytes) {
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new BadRequest('body is not UTF-8');
  }
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new BadRequest(`body is not JSON: ${e.message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new BadRequest('body must be a JSON object, e.g. {"text": "a b a"}');
  }
  const unknown = Object.keys(value)
    .filter((k) => k !== 'text' && k !== 'numbers')
    .sort();
  if (unknown.length > 0) {
    throw new BadRequest(`unknown field \`${unknown[0]}\` (expected \`text\` and/or \`numbers\`)`);
  }
  if (!('text' in value) && !('numbers' in value)) {
    throw new BadRequest('expected `text` (a string) and/or `numbers` (an array of numbers)');
  }
  const out = {};
  if ('text' in value) {
    if (typeof value.text !== 'string') throw new BadRequest('`text` must be a string');
    out.text = textStats(value.text);
  }
  if ('numbers' in value) {
    if (!Array.isArray(value.numbers)) {
      throw new BadRequest('`numbers` must be an array of numbers');
    }
    out.numbers = numberStats(value.numbers);
  }
  return out;
}

function respond(responseOut, status, value) {
  const response = new OutgoingResponse(
    Fields.fromList([['content-type', new TextEncoder().encode('application/json')]]),
  );
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const stream = body.write();
  stream.blockingWriteAndFlush(new TextEncoder().encode(JSON.stringify(value) + '\n'));
  stream[Symbol.dispose]();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    let answer;
    try {
      answer = stats(readAll(request));
    } catch (e) {
      if (!(e instanceof BadRequest)) throw e;
      return respond(responseOut, 400, { error: e.message });
    }
    respond(responseOut, 200, answer);
  },
};
