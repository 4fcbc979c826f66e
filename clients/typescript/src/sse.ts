/**
 * Server-sent events over a fetch body (node 20 and browsers alike; `EventSource` cannot send an API key
 * header). The API sends `event: update` with a `TaskUpdate` each time a task changes, then `end`, `timeout` or
 * `error`; comment lines are heartbeats.
 */

export interface ServerSentEvent {
  readonly event: string;
  readonly data: string;
  readonly id: string | null;
}

/** Feed it lines (without their end of line); it returns each event once its blank line arrives. */
export class SseParser {
  private event = "message";
  private data: string[] = [];
  private id: string | null = null;

  feed(line: string): ServerSentEvent | null {
    if (line === "") {
      const done = this.data.length ? { event: this.event, data: this.data.join("\n"), id: this.id } : null;
      this.event = "message";
      this.data = [];
      return done;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "event") this.event = value;
    else if (name === "data") this.data.push(value);
    else if (name === "id") this.id = value;
    return null;
  }
}

/** The events of a `text/event-stream` body, until it ends. */
export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const parser = new SseParser();
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        const event = parser.feed(line);
        if (event) yield event;
      }
    }
    const last = parser.feed("");
    if (last) yield last;
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}
