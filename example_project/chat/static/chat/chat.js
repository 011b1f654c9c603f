// The example's chat page: one conversation over django-agent-session's WebSocket protocol
// (README: "Live sessions over WebSockets"). No framework, no build step. Everything the page shows is written with
// textContent, never innerHTML, so a message can never inject markup.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const $ = (id) => document.getElementById(id);
  const ui = {
    messages: $("messages"), input: $("input"), send: $("send"), stop: $("stop"),
    form: $("composer"), presence: $("presence"), connection: $("connection"),
    indicator: $("run-indicator"), error: $("error"), title: $("chat-title"),
    conversations: $("conversations"), emptyHint: $("empty-hint"),
  };

  // -- state ----------------------------------------------------------------------------------
  let socket = null;
  let lastSeq = 0;              // largest stored seq seen: the resume point after a reconnect
  let replaying = false;        // between session.state and the last replay.done
  let pendingState = null;      // the state whose running turn / queue is drawn after the replay
  let freshSocket = false;      // no session.state yet on this socket
  let replayedEnds = 0;         // runs that ended in the current replay
  let exists = false;           // the conversation is stored (the first message creates it)
  let running = null;           // ref of the turn that is streaming now
  let retries = 0;
  let refCounter = 0;
  const turns = new Map();      // ref -> Turn, for turns started live (not from the replay)
  let historyTurn = null;       // the turn replayed events are being added to

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function textOf(content) {
    if (typeof content === "string") return content;
    return (content || []).filter((b) => b && b.type === "text").map((b) => b.text).join("");
  }

  function inputText(input) {
    if (input && typeof input === "object" && "message" in input) return String(input.message);
    return typeof input === "string" ? input : JSON.stringify(input);
  }

  function scrollDown() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  // -- a turn: the user's message and the assistant's reply (text parts and tool calls) -----
  // Live turns (started over this socket) carry the class "live" until they end; history turns
  // (from stored events) are inserted before them, so a late replay keeps the order.
  class Turn {
    constructor(userText, { ref = null, live = false } = {}) {
      this.ref = ref;
      this.live = live;
      this.n = 0;               // last delta number applied (deltas are numbered per turn)
      this.tools = new Map();   // tool_use id -> its element
      this.text = null;         // the text part deltas are appended to
      this.nodes = [];
      this.assistant = null;
      if (userText !== null) {
        this.user = el("li", "message user");
        this.user.append(el("div", "bubble", userText));
        this.add(this.user);
      }
    }

    add(node) {
      if (this.live) {
        node.classList.add("live");
        ui.messages.append(node);
      } else {
        ui.messages.insertBefore(node, ui.messages.querySelector(".live"));
      }
      this.nodes.push(node);
      ui.emptyHint.hidden = true;
      scrollDown();
    }

    queued(on) {
      if (!this.user) return;
      this.user.classList.toggle("queued", on);
      let badge = this.user.querySelector(".badge");
      if (on && !badge) this.user.append(el("span", "badge", "queued"));
      if (!on && badge) badge.remove();
    }

    reply() {
      if (!this.assistant) {
        this.assistant = el("li", "message assistant");
        if (this.ref) this.assistant.dataset.ref = this.ref;
        this.parts = el("div", "bubble");
        this.assistant.append(this.parts);
        this.add(this.assistant);
      }
      return this.parts;
    }

    appendText(text) {
      if (!text) return;
      const parts = this.reply();
      if (!this.text || parts.lastChild !== this.text) {
        this.text = el("p", "text");
        parts.append(this.text);
      }
      this.text.textContent += text;
      scrollDown();
    }

    setText(text) {   // the authoritative text so far (session.state's partial_text)
      const parts = this.reply();
      parts.querySelectorAll(".text").forEach((node) => node.remove());
      this.text = null;
      this.appendText(text);
    }

    hasText() {
      return !!this.assistant && this.parts.querySelector(".text") !== null;
    }

    toolCall(id, name, input) {
      const call = el("div", "tool");
      call.append(el("span", "tool-label", "tool call"), el("span", "tool-name", name),
                  el("code", "tool-input", JSON.stringify(input)));
      call.append(el("span", "tool-result muted", "running…"));
      this.reply().append(call);
      this.tools.set(id, call);
      scrollDown();
    }

    toolResult(id, content, isError) {
      const call = this.tools.get(id);
      if (!call) return;
      const result = call.querySelector(".tool-result");
      result.className = isError ? "tool-result error" : "tool-result";
      result.textContent = `→ ${typeof content === "string" ? content : JSON.stringify(content)}`;
    }

    setStatus(status, note) {
      const node = this.reply().parentNode;
      node.dataset.status = status;
      node.classList.toggle("streaming", status === "streaming");
      if (status !== "streaming") {
        this.nodes.forEach((n) => n.classList.remove("live"));
        this.live = false;
      }
      if (note) this.parts.append(el("p", `note ${status}`, note));
    }

    remove() {
      this.nodes.forEach((node) => node.remove());
    }
  }

  // -- the conversation list (REST) --------------------------------------------------------
  async function loadConversations() {
    try {
      const response = await fetch(`${config.listUrl}?page_size=50`, {
        headers: { Accept: "application/json" }, credentials: "same-origin",
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const page = await response.json();
      ui.conversations.replaceChildren();
      for (const session of page.results) {
        const item = el("li", session.id === config.conversationId ? "current" : "");
        if (session.id === config.conversationId && session.title) setTitle(session.title);
        const link = el("a", "", session.title || "Untitled");
        link.href = config.conversationUrl.replace(/0{8}-0{4}-0{4}-0{4}-0{12}/, session.id);
        item.append(link);
        if (session.status !== "idle") item.append(el("span", "status", session.status));
        ui.conversations.append(item);
      }
      if (!page.results.length) ui.conversations.append(el("li", "muted", "None yet."));
    } catch (error) {
      ui.conversations.replaceChildren(el("li", "error", "Could not load the list."));
    }
  }

  // -- rendering stored events (history and what happened while disconnected) ----------------
  function renderEvent(frame) {
    const data = frame.data || {};
    switch (frame.event) {
      case "message.user": {
        historyTurn = new Turn(textOf(data.content));
        if (data.stored === false) historyTurn.user.classList.add("not-stored");
        break;
      }
      case "message.assistant": {
        const turn = historyTurn || (historyTurn = new Turn(null));
        turn.appendText(textOf(data.content));
        break;
      }
      case "tool.call":
        (historyTurn || (historyTurn = new Turn(null))).toolCall(data.id, data.name, data.input);
        break;
      case "tool.result":
        if (historyTurn) historyTurn.toolResult(data.id, data.content, data.is_error);
        break;
      case "run.completed":
        replayedEnds += 1;
        if (historyTurn) historyTurn.setStatus("completed");
        historyTurn = null;
        break;
      case "run.cancelled":
      case "run.failed": {
        replayedEnds += 1;
        const turn = historyTurn || new Turn(null);
        if (data.partial_text && !turn.hasText()) turn.appendText(data.partial_text);
        finishNote(turn, frame.event === "run.cancelled" ? "cancelled" : "failed", data.error);
        historyTurn = null;
        break;
      }
      default:
        break;  // session.started/stopped, usage, message.queued...: nothing to draw
    }
  }

  function finishNote(turn, status, error) {
    if (status === "cancelled") turn.setStatus("cancelled", "Stopped.");
    else turn.setStatus("failed", `Failed: ${(error && (error.message || error.code)) || "error"}`);
  }

  // -- live frames ---------------------------------------------------------------------------
  function turnFor(ref, input) {
    let turn = turns.get(ref);
    if (!turn) {
      turn = new Turn(input === undefined ? null : inputText(input), { ref, live: true });
      turns.set(ref, turn);
    }
    return turn;
  }

  function setRunning(ref) {
    running = ref;
    ui.stop.disabled = !ref || !isOpen();
    ui.indicator.hidden = !ref;
  }

  function startTurn(ref, input, partialText, deltas) {
    const turn = turnFor(ref, input);
    turn.queued(false);
    turn.reply();
    turn.setStatus("streaming");
    if (partialText !== undefined && (deltas || 0) > turn.n) {
      turn.setText(partialText);  // every delta up to `deltas`, in one piece
      turn.n = deltas;
    }
    setRunning(ref);
    return turn;
  }

  function endTurn(ref) {
    turns.delete(ref);
    if (running === ref) setRunning(null);
  }

  function drawLive(state) {  // the running turn and the queue, after the stored history
    if (!state) return;
    // A turn that committed between the live snapshot and the database read is already in the
    // replay (and its end frames are not sent again): do not draw it as running.
    const committed = state.status !== "running" && replayedEnds > 0;
    if (state.running && !committed) {
      startTurn(state.running.ref, state.running.input, state.running.partial_text,
                state.running.deltas);
    }
    for (const item of state.queue || []) turnFor(item.ref, item.input).queued(true);
  }

  function setTitle(title) {
    ui.title.textContent = title;
    document.title = `${title} · django-agent-session example`;
  }

  function showPresence(presence) {
    ui.presence.textContent = presence ? `${presence.count} viewing` : "";
  }

  function onFrame(frame) {
    // The resume point only moves past whole turns: the `message` frame's seq is inside its
    // turn, and the state's seq is reached through its replay.
    if (typeof frame.seq === "number" && frame.type !== "message" && frame.type !== "session.state") {
      lastSeq = Math.max(lastSeq, frame.seq);
    }
    switch (frame.type) {
      case "session.state":
        exists = frame.exists;
        if (frame.title) setTitle(frame.title);
        if (frame.presence) showPresence(frame.presence);
        if (freshSocket) {
          // (re)connected: unfinished turns are redrawn from the replay and this state
          freshSocket = false;
          for (const turn of turns.values()) turn.remove();
          turns.clear();
          setRunning(null);
          pendingState = frame;
        } else if (frame.seq > lastSeq) {
          // joined without a replay (e.g. just created): fetch what we have not drawn
          replaying = true;
          replayedEnds = 0;
          pendingState = frame;
          send({ type: "resume", after_seq: lastSeq });
        } else {
          drawLive(frame);
        }
        break;
      case "event":
        renderEvent(frame);
        break;
      case "replay.done":
        if (frame.more) {
          send({ type: "resume", after_seq: frame.seq });
        } else {
          replaying = false;
          historyTurn = null;
          drawLive(pendingState);
          pendingState = null;
        }
        break;
      case "message.queued":
        turnFor(frame.ref, frame.input).queued(true);
        break;
      case "run.status":
        onRunStatus(frame);
        break;
      case "delta": {
        const turn = turns.get(frame.ref) || startTurn(frame.ref, undefined);
        if (frame.n && frame.n <= turn.n) break;  // already in the state's partial text
        turn.n = frame.n || turn.n + 1;
        if (frame.kind === "text") turn.appendText(frame.text);
        break;
      }
      case "tool.call":
        turnFor(frame.ref).toolCall(frame.id, frame.name, frame.input);
        break;
      case "tool.result":
        turnFor(frame.ref).toolResult(frame.id, frame.content, frame.is_error);
        break;
      case "message": {
        const turn = turns.get(frame.ref);
        if (turn && !turn.hasText()) turn.appendText(textOf(frame.content));
        break;
      }
      case "presence":
        showPresence(frame);
        break;
      case "session.stopped":
        showPresence(null);
        break;
      case "error":
        showError(frame);
        break;
      default:
        break;  // session.started, pong, budget.warning
    }
  }

  function onRunStatus(frame) {
    const ref = frame.ref;
    if (frame.status === "started") {
      startTurn(ref, frame.input);
      return;
    }
    const turn = turns.get(ref);
    if (frame.status === "completed") {
      if (turn) turn.setStatus("completed");
      endTurn(ref);
      loadConversations();
    } else if (frame.status === "cancelled" && frame.queued) {
      if (turn) turn.remove();
      endTurn(ref);
    } else if (turn) {  // cancelled or failed
      if (frame.partial_text && !turn.hasText()) turn.appendText(frame.partial_text);
      finishNote(turn, frame.status, frame.error);
      endTurn(ref);
      loadConversations();
    }
  }

  function showError(frame) {
    const details = frame.errors ? ` ${JSON.stringify(frame.errors)}` : "";
    ui.error.textContent = `${frame.message || frame.code}${details}`;
    ui.error.hidden = false;
  }

  // -- the socket ----------------------------------------------------------------------------
  function isOpen() {
    return socket !== null && socket.readyState === WebSocket.OPEN;
  }

  function send(frame) {
    if (!isOpen()) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  function setConnection(state, label) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = label;
    ui.send.disabled = state !== "open";
    ui.stop.disabled = state !== "open" || !running;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    // after_seq=0 on the first connect replays the whole history; later, only what was missed
    const url = `${scheme}://${location.host}${config.socketPath}?after_seq=${lastSeq}`;
    replaying = freshSocket = true;
    replayedEnds = 0;
    socket = new WebSocket(url);
    setConnection("connecting", retries ? "Reconnecting…" : "Connecting…");
    socket.onopen = () => {
      retries = 0;
      setConnection("open", "Live");
    };
    socket.onmessage = (event) => onFrame(JSON.parse(event.data));
    socket.onclose = (event) => {
      socket = null;
      showPresence(null);
      const fatal = { 4401: "Your login expired: reload the page.",
                      4403: "This conversation belongs to someone else.",
                      4404: "No such agent." }[event.code];
      if (fatal) {
        setConnection("closed", fatal);
        return;
      }
      retries += 1;
      const wait = Math.min(500 * 2 ** (retries - 1), 10000);
      setConnection("reconnecting", "Reconnecting…");
      setTimeout(connect, wait);
    };
  }

  // -- the composer --------------------------------------------------------------------------
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const message = ui.input.value.trim();
    if (!message) return;
    refCounter += 1;
    const ref = `${Date.now().toString(36)}-${refCounter}`;
    if (!send({ type: "message", input: { message }, ref })) return;
    ui.error.hidden = true;
    ui.input.value = "";
    if (!exists && location.pathname !== config.pageUrl) {
      history.replaceState(null, "", config.pageUrl);  // the first message creates it
    }
  });

  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });

  ui.stop.addEventListener("click", () => {
    if (running) send({ type: "cancel", ref: running });
  });

  // A conversation that did not exist when this tab connected is joined once someone creates it.
  // (A fresh conversation at "/" has an id no other tab knows, so only a /c/<id>/ page asks.)
  setInterval(() => {
    if (!exists && !replaying && location.pathname === config.pageUrl) send({ type: "state" });
  }, 3000);

  connect();
  loadConversations();
})();
