// `chain` in JavaScript: calls another function through the platform and reports what it
// answered, as the Rust `chain` in examples/functions and the Python one do - with an
// ordinary outgoing `wasi:http` request to `http://turnpike<PATH>` (the worker adds who is
// calling; the guest sends no key or token).
//
// `?to=PATH` (percent-decoded, starting with `/`) names the callee; `via=HOST` sends to
// `http://HOST<PATH>` instead (`APP.turnpike` reaches app APP's routes; any other host is
// refused by the worker). The request's method and body are passed on, so a `POST` of JSON
// reaches a JSON function. The answer has the callee's status, and the body
//
//     called PATH: STATUS, ran at CLASS
//     <the callee's body>
//
// where CLASS is the callee's `x-turnpike-class` response header (the class the platform ran
// it at) or `-`. A missing or bad `to` gets `400`; a call that failed gets `502` naming the
// error.

import { handle as send } from 'wasi:http/outgoing-handler@0.2.12';
import {
  Fields,
  OutgoingBody,
  OutgoingRequest,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.12';

const BODY_BYTES_MAX = 1 << 20;

class BadRequest extends Error {}
class CallFailed extends Error {}

// `[path, authority]` of the call this request asks for.
function target(pathWithQuery) {
  const at = pathWithQuery.indexOf('?');
  const query = at < 0 ? '' : pathWithQuery.slice(at + 1);
  const found = {};
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    const name = eq < 0 ? pair : pair.slice(0, eq);
    if (name !== 'to' && name !== 'via') continue;
    if (name in found) throw new BadRequest(`query parameter \`${name}\` given more than once`);
    found[name] = eq < 0 ? '' : pair.slice(eq + 1);
  }
  if (!('to' in found)) throw new BadRequest('missing query parameter `to` (e.g. ?to=/hello)');
  let path;
  try {
    path = decodeURIComponent(found.to.replace(/\+/g, ' '));
  } catch {
    throw new BadRequest(`bad percent-escape in \`to\`: ${JSON.stringify(found.to)}`);
  }
  if (!path.startsWith('/')) {
    throw new BadRequest(`\`to\` must be a path starting with \`/\`, got ${JSON.stringify(path)}`);
  }
  return [path, found.via || 'turnpike'];
}

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
        throw new CallFailed(`reading a body: ${JSON.stringify(e.payload ?? String(e))}`);
      }
      chunks.push(chunk);
      length += chunk.length;
      if (length > BODY_BYTES_MAX) throw new CallFailed(`a body is larger than ${BODY_BYTES_MAX} bytes`);
    }
  } finally {
    stream[Symbol.dispose]();
  }
  const all = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  return all;
}

// Sends the request (a `POST` of `body` if there is one, else a `GET`) and waits for the whole
// response: `[status, class, body]`.
function call(authority, path, body) {
  const headers = body.length > 0 ? [['content-type', new TextEncoder().encode('application/json')]] : [];
  const request = new OutgoingRequest(Fields.fromList(headers));
  request.setMethod({ tag: body.length > 0 ? 'post' : 'get' });
  request.setScheme({ tag: 'HTTP' });
  try {
    request.setAuthority(authority);
    request.setPathWithQuery(path);
  } catch {
    throw new CallFailed(`bad authority or path ${JSON.stringify(authority)} ${JSON.stringify(path)}`);
  }
  const outgoing = request.body();
  if (body.length > 0) {
    const stream = outgoing.write();
    stream.blockingWriteAndFlush(body);
    stream[Symbol.dispose]();
  }
  OutgoingBody.finish(outgoing, undefined);
  let pending;
  try {
    pending = send(request, undefined);
  } catch (e) {
    throw new CallFailed(JSON.stringify(e.payload ?? String(e)));
  }
  const ready = pending.subscribe();
  ready.block();
  ready[Symbol.dispose]();
  // option<result<result<incoming-response, error-code>>>: only a top-level result throws.
  const outer = pending.get();
  if (outer === undefined) throw new CallFailed('no response after the wait');
  if (outer.tag !== 'ok') throw new CallFailed('the response was taken twice');
  if (outer.val.tag !== 'ok') throw new CallFailed(JSON.stringify(outer.val.val));
  const response = outer.val.val;
  const classes = response.headers().get('x-turnpike-class');
  const ranAt = classes.length > 0 ? new TextDecoder().decode(classes[0]) : '-';
  return [response.status(), ranAt, readAll(response)];
}

function respond(responseOut, status, bytes) {
  const response = new OutgoingResponse(
    Fields.fromList([['content-type', new TextEncoder().encode('text/plain; charset=utf-8')]]),
  );
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const stream = body.write();
  stream.blockingWriteAndFlush(bytes);
  stream[Symbol.dispose]();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    const text = (s) => new TextEncoder().encode(s);
    let path, authority;
    try {
      [path, authority] = target(request.pathWithQuery() || '/');
    } catch (e) {
      if (!(e instanceof BadRequest)) throw e;
      return respond(responseOut, 400, text(`${e.message}\n`));
    }
    let status, ranAt, answer;
    try {
      [status, ranAt, answer] = call(authority, path, readAll(request));
    } catch (e) {
      if (e instanceof CallFailed) {
        return respond(responseOut, 502, text(`calling ${path}: ${e.message}\n`));
      }
      return respond(responseOut, 500, text(`chain failed: ${e}\n${e.stack}\n`));
    }
    const head = text(`called ${path}: ${status}, ran at ${ranAt}\n`);
    const all = new Uint8Array(head.length + answer.length);
    all.set(head, 0);
    all.set(answer, head.length);
    respond(responseOut, status, all);
  },
};
