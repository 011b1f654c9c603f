// The example's chat page: one conversation over django-agent-session's WebSocket protocol
// (README: "Live sessions over WebSockets"). No framework, no build step. Nothing is ever written with
// innerHTML: the user's messages, tool calls and everything else are set as textContent, and the
// model's replies are Markdown that markdown.js turns into DOM nodes it creates one by one (no raw
// HTML, only http/https/mailto links), so a message can never inject markup.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const $ = (id) => document.getElementById(id);
  const ui = {
    messages: $("messages"), input: $("input"), send: $("send"), stop: $("stop"),
    form: $("composer"), presence: $("presence"), connection: $("connection"),
    indicator: $("run-indicator"), error: $("error"), title: $("chat-title"),
    conversations: $("conversations"), emptyHint: $("empty-hint"),
    sidebarToggle: $("sidebar-toggle"), sidebarClose: $("sidebar-close"),
    backdrop: $("sidebar-backdrop"), attach: $("attach"),
  };
  const sources = new WeakMap();  // a reply's text part -> its Markdown source so far

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
  const byRun = new Map();      // run id -> Turn: a paused turn goes on when its run resumes
  const approvals = new Map();  // tool_use_id -> Approval card
  const deciding = new Map();   // ref of a sent `decide` -> its Approval card
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

  // what a user message shows of its attached files
  function filesNote(count) {
    return count ? ` 📎 ${count === 1 ? "1 file" : `${count} files`}` : "";
  }

  function inputText(input) {
    if (input && typeof input === "object" && "message" in input) {
      return String(input.message) + filesNote((input.attachments || []).length);
    }
    return typeof input === "string" ? input : JSON.stringify(input);
  }

  function nextRef() {
    refCounter += 1;
    return `${Date.now().toString(36)}-${refCounter}`;
  }

  // JSON with sorted keys: an edited input is sent only if it differs from the model's
  function canonical(value) {
    if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
    if (value && typeof value === "object") {
      return `{${Object.keys(value).sort()
        .map((key) => `${JSON.stringify(key)}:${canonical(value[key])}`).join(",")}}`;
    }
    return JSON.stringify(value);
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
      this.n = 0;               // last frame number seen (a run's frames are numbered)
      this.skip = 0;            // buffered deltas still to come that a state's text has
      this.tools = new Map();   // tool_use id -> its element
      this.text = null;         // the text part deltas are appended to
      this.nodes = [];
      this.assistant = null;
      this.runId = null;
      this.fromHistory = false; // drawn from stored events
      this.stored = null;       // the reply's parts that are stored (a paused turn), see keep()
      this.storedText = "";
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

    setRun(runId) {
      if (!runId || this.runId === runId) return;
      this.runId = runId;
      byRun.set(runId, this);
    }

    // Its events so far are stored (it paused for an approval, or it was drawn from the
    // replay): a reconnect keeps this part and trims only what streamed after it.
    keep() {
      const parts = this.reply();
      this.stored = Array.from(parts.children);
      this.storedText = Array.from(parts.querySelectorAll(".text"), (n) => sources.get(n) || "")
        .join("");
    }

    trim() {  // on reconnect: unfinished turns are redrawn from the replay and the state
      if (!this.stored) {
        this.remove();
        return;
      }
      Array.from(this.parts.children).forEach((node) => {
        if (!this.stored.includes(node)) node.remove();
      });
      this.text = null;
      this.n = 0;
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
        this.text = el("div", "text markdown");
        parts.append(this.text);
      }
      // Streaming: the whole part is rendered again from its source so far, so a construct
      // completed by this delta (a closing ** or ```) takes effect at once.
      const source = (sources.get(this.text) || "") + text;
      sources.set(this.text, source);
      this.text.replaceChildren(window.renderMarkdown(source));
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
      if (this.tools.has(id)) return;  // sent again with a paused run's frames
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

    approvalRequested(call) {  // {tool_use_id, name, input, expires_at?}
      let card = approvals.get(call.tool_use_id);
      if (!card) {
        card = new Approval(call);
        approvals.set(card.id, card);
        const tool = this.tools.get(call.tool_use_id);
        if (tool) {
          tool.querySelector(".tool-result").textContent = "waiting for approval…";
          tool.append(card.node);
        } else {
          this.reply().append(card.node);
        }
        this.cards = (this.cards || []).concat(card);
        scrollDown();
      }
      if (call.expires_at) card.setExpiry(call.expires_at);
      return card;
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
      if (this.runId && byRun.get(this.runId) === this) byRun.delete(this.runId);
      (this.cards || []).forEach((card) => approvals.delete(card.id));
    }
  }

  // -- a tool call waiting for a person: Approve (with an edited input) or Reject -----------
  // Shown on every tab; resolved on every tab by the decision frame the server sends them.
  class Approval {
    constructor(call) {
      this.id = call.tool_use_id;
      this.original = call.input || {};
      this.node = el("div", "approval");
      this.node.dataset.state = "pending";
      this.node.dataset.toolUseId = this.id;
      const head = el("div", "approval-head");
      this.name = call.name;
      this.title = el("strong", "approval-title", `${call.name} needs your approval`);
      this.expiry = el("span", "approval-expiry muted");
      head.append(this.title, this.expiry);
      this.input = el("textarea", "approval-input");
      this.input.value = JSON.stringify(this.original, null, 2);
      this.input.rows = Math.min(8, this.input.value.split("\n").length);
      this.input.spellcheck = false;
      this.input.setAttribute("aria-label", `Input of ${call.name} (editable JSON)`);
      this.reason = el("input", "approval-reason");
      this.reason.placeholder = "Reason, if you reject (the agent is told)";
      this.reason.maxLength = 2000;
      this.approveButton = el("button", "approve", "Approve");
      this.rejectButton = el("button", "reject", "Reject");
      this.approveButton.type = this.rejectButton.type = "button";
      const controls = el("div", "approval-controls");
      controls.append(this.reason, this.rejectButton, this.approveButton);
      this.status = el("p", "approval-status");
      this.node.append(head, this.input, controls, this.status);
      this.approveButton.addEventListener("click", () => this.decide(true));
      this.rejectButton.addEventListener("click", () => this.decide(false));
      this.reason.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.isComposing) {
          event.preventDefault();
          this.decide(false);
        }
      });
    }

    setExpiry(expiresAt) {
      const when = new Date(expiresAt);
      if (Number.isNaN(when.getTime())) return;
      this.expiry.textContent = `rejected automatically at ${when.toLocaleTimeString()}`;
    }

    busy(on) {
      this.approveButton.disabled = this.rejectButton.disabled = on;
      this.input.readOnly = this.reason.readOnly = on;
    }

    decide(approve) {
      if (this.node.dataset.state !== "pending") return;
      const frame = { type: "decide", tool_use_id: this.id, approve, ref: nextRef() };
      if (approve) {
        let edited;
        try {
          edited = JSON.parse(this.input.value);
        } catch (error) {
          this.fail("The input is not valid JSON.");
          return;
        }
        if (!edited || typeof edited !== "object" || Array.isArray(edited)) {
          this.fail("The input must be a JSON object.");
          return;
        }
        if (canonical(edited) !== canonical(this.original)) frame.input = edited;
      } else if (this.reason.value.trim()) {
        frame.reason = this.reason.value.trim();
      }
      if (!send(frame)) {
        this.fail("Not connected: try again in a moment.");
        return;
      }
      deciding.set(frame.ref, this);
      this.busy(true);
      this.status.className = "approval-status muted";
      this.status.textContent = approve ? "Approving…" : "Rejecting…";
    }

    fail(message) {  // the decision was not taken: the card stays pending
      this.busy(false);
      this.status.className = "approval-status error";
      this.status.textContent = message;
    }

    // A decision: from this tab's `decided`, any tab's `tool.approval_granted/denied` frame or
    // a replayed event. The later ones may add what the first did not say (the reason).
    resolve(approved, details = {}) {
      const state = approved ? "approved" : "rejected";
      this.node.dataset.state = state;
      this.node.classList.add("resolved");
      this.title.textContent = `Approval of ${this.name}`;
      this.busy(true);
      if (details.input) this.input.value = JSON.stringify(details.input, null, 2);
      let text = approved ? "Approved" : "Rejected";
      if (approved && details.input) text += " with an edited input";
      if (details.by !== undefined && details.by !== null) {
        text += details.by === config.userId ? " by you" : " by another user";
      }
      if (!approved && details.reason) text += `: ${details.reason}`;
      if (details.reason !== undefined || details.by !== undefined || !this.decided) {
        this.status.className = `approval-status ${state}`;
        this.status.textContent = /[.!?…]$/.test(text) ? text : `${text}.`;
      }
      this.decided = true;
    }

    close(message) {  // decided somewhere we did not hear how
      if (this.decided) return;
      this.node.dataset.state = "closed";
      this.node.classList.add("resolved");
      this.title.textContent = `Approval of ${this.name}`;
      this.busy(true);
      this.status.className = "approval-status muted";
      this.status.textContent = message;
    }
  }

  function onDecision(kind, data) {  // a `tool.approval_granted/denied` frame or stored event
    const card = approvals.get(data.tool_use_id);
    if (!card) return;
    const approved = typeof data.approved === "boolean" ? data.approved
      : kind === "tool.approval_granted";
    card.resolve(approved, { reason: data.reason || "", by: data.by, input: data.input });
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
  // The turn a stored event belongs to: a paused turn drawn before (its run goes on after a
  // decision, and the replay after a reconnect has only what followed), else the current one.
  function storedTurn(frame) {
    const known = frame.run_id ? byRun.get(frame.run_id) : null;
    if (known && (known.fromHistory || known.stored)) return known;
    return null;
  }

  function historyFor(frame) {
    const known = storedTurn(frame);
    if (known) return (historyTurn = known);
    if (!historyTurn) {
      historyTurn = new Turn(null);
      historyTurn.fromHistory = true;
      historyTurn.setRun(frame.run_id);
    }
    return historyTurn;
  }

  function renderEvent(frame) {
    const data = frame.data || {};
    switch (frame.event) {
      case "message.user": {
        const known = storedTurn(frame);
        if (known) {
          historyTurn = known;
          break;
        }
        const files = (Array.isArray(data.content) ? data.content : [])
          .filter((b) => b && (b.type === "image" || b.type === "document")).length;
        historyTurn = new Turn(textOf(data.content) + filesNote(files));
        historyTurn.fromHistory = true;
        historyTurn.setRun(frame.run_id);
        if (data.stored === false) historyTurn.user.classList.add("not-stored");
        break;
      }
      case "message.assistant":
        historyFor(frame).appendText(textOf(data.content));
        break;
      case "tool.call":
        historyFor(frame).toolCall(data.id, data.name, data.input);
        break;
      case "tool.result": {
        const turn = storedTurn(frame) || historyTurn;
        if (turn) turn.toolResult(data.id, data.content, data.is_error);
        break;
      }
      case "tool.approval_requested": {
        const turn = historyFor(frame);
        turn.approvalRequested(data);
        turn.setStatus("awaiting_approval");
        break;
      }
      case "tool.approval_granted":
      case "tool.approval_denied":
        onDecision(frame.event, data);
        break;
      case "run.completed": {
        replayedEnds += 1;
        const turn = storedTurn(frame) || historyTurn;
        if (turn) turn.setStatus("completed");
        forgetRun(frame.run_id);
        historyTurn = null;
        break;
      }
      case "run.cancelled":
      case "run.failed": {
        replayedEnds += 1;
        const turn = storedTurn(frame) || historyTurn || new Turn(null);
        if (data.partial_text && !turn.hasText()) turn.appendText(data.partial_text);
        finishNote(turn, frame.event === "run.cancelled" ? "cancelled" : "failed", data.error);
        forgetRun(frame.run_id);
        historyTurn = null;
        break;
      }
      default:
        break;  // session.started/stopped, usage, run.queued, run.resumed...: nothing to draw
    }
  }

  function forgetRun(runId) {  // an ended run: nothing of it goes on
    const turn = runId ? byRun.get(runId) : null;
    if (!turn) return;
    byRun.delete(runId);
    (turn.cards || []).forEach((card) => card.close("Decided."));
  }

  function finishNote(turn, status, error) {
    if (status === "cancelled") turn.setStatus("cancelled", "Stopped.");
    else turn.setStatus("failed", `Failed: ${(error && (error.message || error.code)) || "error"}`);
  }

  // -- live frames ---------------------------------------------------------------------------
  function turnFor(ref, input, runId) {
    let turn = turns.get(ref);
    if (!turn) {
      turn = runId ? byRun.get(runId) : null;  // a paused turn its run goes on with
      if (turn) {
        if (!turn.stored) turn.keep();
      } else {
        turn = new Turn(input === undefined ? null : inputText(input), { ref, live: true });
      }
      turns.set(ref, turn);
    }
    turn.setRun(runId);
    return turn;
  }

  function setRunning(ref) {
    running = ref;
    ui.stop.disabled = !ref || !isOpen();
    ui.indicator.hidden = !ref;
  }

  function startTurn(ref, input, partialText, deltas, runId) {
    const turn = turnFor(ref, input, runId);
    turn.queued(false);
    turn.reply();
    turn.setStatus("streaming");
    if (partialText !== undefined && (deltas || 0) > turn.n) {
      if (turn.stored) {
        // a resumed run: the text before its pause is drawn (and stored) already
        const before = turn.storedText;
        turn.trim();
        turn.appendText(partialText.startsWith(before) ? partialText.slice(before.length)
                                                       : partialText);
      } else {
        turn.setText(partialText);  // every delta so far, in one piece
      }
      // The run's buffered frames follow this state: its `deltas` delta frames are in the text
      // already (counted, not numbered: tool frames are numbered among them), the rest not.
      turn.n = 0;
      turn.skip = deltas;
    }
    setRunning(ref);
    return turn;
  }

  function endTurn(ref) {
    const turn = turns.get(ref);
    turns.delete(ref);
    if (turn) forgetRun(turn.runId);
    if (running === ref) setRunning(null);
  }

  function pausedTurn(ref, runId) {  // a turn waiting for decisions: its run goes on later
    let turn = turns.get(ref) || (runId ? byRun.get(runId) : null);
    if (!turn) {  // its start is not drawn (a replay that began after it)
      turn = new Turn(null);
      turn.fromHistory = true;
    }
    turn.setRun(runId);
    return turn;
  }

  function drawLive(state) {  // the running turn and the queue, after the stored history
    if (!state) return;
    // A turn that committed between the live snapshot and the database read is already in the
    // replay (and its end frames are not sent again): do not draw it as running.
    const committed = state.status !== "running" && replayedEnds > 0;
    if (state.running && !committed) {
      startTurn(state.running.ref, state.running.input, state.running.partial_text,
                state.running.deltas, state.running.run_id);
    }
    for (const item of state.queue || []) turnFor(item.ref, item.input, item.run_id).queued(true);
    for (const call of state.pending || []) {  // tool calls waiting for a decision
      const turn = pausedTurn(call.ref, call.run_id);
      turn.approvalRequested(call);
      turn.setStatus("awaiting_approval");
      turn.keep();
    }
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
          for (const turn of turns.values()) turn.trim();  // a paused turn keeps its stored part
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
        turnFor(frame.ref, frame.input, frame.run_id).queued(true);
        break;
      case "run.status":
        onRunStatus(frame);
        break;
      case "delta": {
        const turn = turns.get(frame.ref) ||
          startTurn(frame.ref, undefined, undefined, undefined, frame.run_id);
        if (frame.n && frame.n <= turn.n) break;  // seen already
        turn.n = frame.n || turn.n + 1;
        if (turn.skip > 0) {  // already in the state's partial text
          turn.skip -= 1;
          break;
        }
        if (frame.kind === "text") turn.appendText(frame.text);
        break;
      }
      case "tool.call":
        turnFor(frame.ref, undefined, frame.run_id).toolCall(frame.id, frame.name, frame.input);
        break;
      case "tool.result":
        turnFor(frame.ref, undefined, frame.run_id).toolResult(frame.id, frame.content,
                                                              frame.is_error);
        break;
      case "tool.approval_requested":
        turnFor(frame.ref, undefined, frame.run_id).approvalRequested(frame);
        break;
      case "tool.approval_granted":
      case "tool.approval_denied":
        onDecision(frame.type, frame);
        break;
      case "decided": {  // this tab's decision was taken (every tab also gets the frame above)
        const card = deciding.get(frame.ref) || approvals.get(frame.tool_use_id);
        deciding.delete(frame.ref);
        if (card) card.resolve(frame.approved);
        break;
      }
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
      case "error": {
        const card = frame.ref ? deciding.get(frame.ref) : null;
        if (card) {  // a decision that was not taken: told on its card
          deciding.delete(frame.ref);
          decisionFailed(card, frame);
        } else {
          showError(frame);
        }
        break;
      }
      default:
        break;  // session.started, pong, budget.warning
    }
  }

  function decisionFailed(card, frame) {
    if (frame.code === "already_decided") {
      card.close("Already decided.");
    } else if (frame.code === "tool_call_not_found") {
      card.close("This call no longer waits for a decision.");
    } else {
      const details = frame.errors ? ` ${JSON.stringify(frame.errors)}` : "";
      card.fail(`${frame.message || frame.code}${details}`);
    }
  }

  function onRunStatus(frame) {
    const ref = frame.ref;
    if (frame.status === "started") {
      const turn = startTurn(ref, frame.input, undefined, undefined, frame.run_id);
      if (frame.resumed) {  // decided: its cards are resolved by the decision frames
        turn.n = 0;
        (turn.cards || []).forEach((card) => card.close("Decided."));
      }
      return;
    }
    if (frame.status === "awaiting_approval") {
      const turn = pausedTurn(ref, frame.run_id);
      for (const call of frame.pending || []) turn.approvalRequested(call);
      turn.setStatus("awaiting_approval");
      turn.keep();  // stored up to here: a reconnect keeps it
      if (running === ref) setRunning(null);
      send({ type: "state" });  // its pending calls with their deadline
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
  // An attached image or PDF is uploaded over REST first (POST …/{id}/attachments/, which
  // reads its type from its bytes), then named by id in the message frame.
  async function uploadAttachment(file) {
    if (!exists) send({ type: "start", ref: nextRef() });  // the upload needs the session
    const csrf = (document.cookie.match(/(?:^|; )csrftoken=([^;]*)/) || [])[1] || "";
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const body = new FormData();
      body.append("file", file);
      const response = await fetch(config.attachmentsUrl, {
        method: "POST", body, credentials: "same-origin",
        headers: { "X-CSRFToken": decodeURIComponent(csrf), Accept: "application/json" },
      });
      if (response.status === 404 && !exists) {  // the start frame is still on its way
        await new Promise((resolve) => setTimeout(resolve, 150));
        continue;
      }
      const data = await response.json().catch(() => ({}));
      if (!response.ok) {
        const detail = (data.errors && data.errors.file && data.errors.file[0]) || data.detail;
        throw new Error(detail || `The upload failed (${response.status}).`);
      }
      return data.id;
    }
    throw new Error("The conversation could not be created for the upload.");
  }

  ui.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = ui.input.value.trim();
    if (!message) return;
    const file = ui.attach && ui.attach.files[0];
    const input = { message };
    if (file) {
      ui.send.disabled = true;
      try {
        input.attachments = [await uploadAttachment(file)];
      } catch (error) {
        ui.error.textContent = error.message;
        ui.error.hidden = false;
        return;
      } finally {
        ui.send.disabled = false;
      }
    }
    const ref = nextRef();
    if (!send({ type: "message", input, ref })) return;
    ui.error.hidden = true;
    ui.input.value = "";
    if (ui.attach) ui.attach.value = "";
    if (location.pathname !== config.pageUrl) {
      // the first message (or the upload before it) created it
      history.replaceState(null, "", config.pageUrl);
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

  // -- the conversation list as a drawer on narrow screens (chat.css: max-width 700px) -------
  function setSidebar(open) {
    document.body.classList.toggle("sidebar-open", open);
    ui.sidebarToggle.setAttribute("aria-expanded", String(open));
    ui.backdrop.hidden = !open;
    if (open) ui.sidebarClose.focus();
    else if (document.activeElement && document.activeElement.closest(".sidebar")) {
      ui.sidebarToggle.focus();
    }
  }

  ui.sidebarToggle.addEventListener("click", () => {
    setSidebar(!document.body.classList.contains("sidebar-open"));
  });
  ui.sidebarClose.addEventListener("click", () => setSidebar(false));
  ui.backdrop.addEventListener("click", () => setSidebar(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) {
      setSidebar(false);
    }
  });
  window.matchMedia("(min-width: 701px)").addEventListener("change", (event) => {
    // wide again: the sidebar is a column, not a drawer
    if (event.matches && document.body.classList.contains("sidebar-open")) setSidebar(false);
  });

  // A conversation that did not exist when this tab connected is joined once someone creates it.
  // (A fresh conversation at "/" has an id no other tab knows, so only a /c/<id>/ page asks.)
  setInterval(() => {
    if (!exists && !replaying && location.pathname === config.pageUrl) send({ type: "state" });
  }, 3000);

  connect();
  loadConversations();
})();
