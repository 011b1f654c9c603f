// Reads our ai-sdk SSE bodies the way useChat does, with the AI SDK's own code: the
// DefaultChatTransport parses and validates every chunk (uiMessageChunkSchema), and
// readUIMessageStream builds the assistant message from them.
//
// stdin: {"streams": ["<SSE body>", ...]}; each stream after the first continues the message
// the previous ones built (a run that goes on after an approval, or a reconnect).
// stdout: {"messages": [<the UI message after each stream>], "errors": ["..."]}
import { DefaultChatTransport, readUIMessageStream } from "ai";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { streams } = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const errors = [];
const messages = [];
let message;
for (const body of streams) {
  const transport = new DefaultChatTransport({
    api: "http://loopback.invalid/stream",
    fetch: async () => new Response(body, { headers: { "content-type": "text/event-stream" } }),
  });
  const stream = await transport.sendMessages({
    chatId: "chat", messages: [], trigger: "submit-message", messageId: undefined,
    abortSignal: undefined,
  });
  let last;
  for await (const snapshot of readUIMessageStream({
    message, stream, onError: (error) => errors.push(String(error?.message ?? error).split("\n")[0]),
  })) {
    last = snapshot;
  }
  message = last ?? message;
  messages.push(message ? structuredClone(message) : null);
}
process.stdout.write(JSON.stringify({ messages, errors }));
