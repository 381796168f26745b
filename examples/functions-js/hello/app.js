// `hello` in JavaScript: any request gets `200` with the body `hello from turnpike\n`, as the
// Rust hello in examples/functions does.

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.12';

const BODY = new TextEncoder().encode('hello from turnpike\n');

export const incomingHandler = {
  handle(_request, responseOut) {
    const response = new OutgoingResponse(
      Fields.fromList([['content-type', new TextEncoder().encode('text/plain')]]),
    );
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(BODY);
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
