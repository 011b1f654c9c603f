// A small Markdown renderer for the chat's replies, with no dependency and no build step.
//
// window.renderMarkdown(source) returns a DocumentFragment. It builds DOM nodes one by one
// (createElement and text nodes, never innerHTML), so nothing in a reply is ever parsed as
// HTML: `<script>` or `<img onerror=…>` in a reply stays visible text. Links get an href only
// when it is http:, https: or mailto: (anything else is shown as the Markdown it was written
// as), open in a new tab with rel="noopener noreferrer"; images are shown as links, never
// loaded.
//
// Supported: paragraphs (a single newline is a visible line break, as in chat apps), ATX and
// setext headings, **strong**, *emphasis*, ~~strikethrough~~, `code spans`, fenced code blocks
// (``` or ~~~, with a language class), bullet and ordered lists (nested by indentation),
// block quotes, horizontal rules, GitHub-style tables, [links](https://…), <autolinks>,
// bare https:// URLs and backslash escapes. Not supported: raw HTML (shown as text), entity
// references (shown as written), indented code blocks, reference-style links. An unfinished
// construct (a reply still streaming) renders as text, or an unclosed code fence as a code
// block up to the end, until the rest of it arrives.
"use strict";

(() => {
  const FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;
  const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:([ \t]+)(.*))?$/;
  const SETEXT = /^ {0,3}(=+|-{2,})[ \t]*$/;  // a lone "-" starts a list item instead
  const TABLE_DELIMITER = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
  const PUNCTUATION = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/;
  const SAFE_URL = /^(?:https?:\/\/|mailto:)[^\s\u0000-\u001f\u007f]+$/i;
  const BARE_URL = /^https?:\/\/[^\s<>]+/i;
  const WORD = /[\p{L}\p{N}]/u;
  const SPACE = /\s/;

  const make = (tag, className) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  };
  const isBlank = (line) => line.trim() === "";
  const indentOf = (line) => line.length - line.trimStart().length;

  // -- blocks ---------------------------------------------------------------------------------
  function interrupts(line) {  // starts a block that ends a paragraph
    return FENCE.test(line) && !badFence(line) || HEADING.test(line) || HR.test(line) ||
      QUOTE.test(line) || /^ {0,3}(?:[-*+]|1[.)])[ \t]+\S/.test(line);
  }

  function badFence(line) {  // ``` fences cannot have a backtick in their info string
    const match = FENCE.exec(line);
    return !!match && match[2][0] === "`" && match[3].includes("`");
  }

  function blocks(lines, into) {
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let match;
      if (isBlank(line)) {
        i += 1;
      } else if ((match = FENCE.exec(line)) && !badFence(line)) {
        i = fence(lines, i, match, into);
      } else if ((match = HEADING.exec(line))) {
        const heading = make(`h${match[1].length}`);
        inline(match[2] || "", heading);
        into.append(heading);
        i += 1;
      } else if (HR.test(line)) {
        into.append(make("hr"));
        i += 1;
      } else if (QUOTE.test(line)) {
        i = quote(lines, i, into);
      } else if (ITEM.test(line)) {
        i = list(lines, i, into);
      } else if (tableAt(lines, i)) {
        i = table(lines, i, into);
      } else {
        i = paragraph(lines, i, into);
      }
    }
  }

  function paragraph(lines, i, into) {
    const text = [lines[i].trim()];
    i += 1;
    let heading = null;
    while (i < lines.length && !isBlank(lines[i])) {
      const match = SETEXT.exec(lines[i]);
      if (match) {
        heading = match[1][0] === "=" ? "h1" : "h2";
        i += 1;
        break;
      }
      if (interrupts(lines[i]) || tableAt(lines, i)) break;
      text.push(lines[i].trim());
      i += 1;
    }
    const node = make(heading || "p");
    inline(text.join("\n"), node);
    into.append(node);
    return i;
  }

  function fence(lines, i, match, into) {
    const indent = match[1].length;
    const marker = match[2];
    const language = match[3].trim().split(/\s+/)[0];
    const body = [];
    let closed = false;
    i += 1;
    while (i < lines.length && !closed) {
      const line = lines[i];
      i += 1;
      const rest = line.replace(/^ {0,3}/, "");
      let run = 0;
      while (rest[run] === marker[0]) run += 1;
      closed = run >= marker.length && rest.slice(run).trim() === "";
      if (!closed) body.push(line.slice(Math.min(indent, indentOf(line))));
    }
    if (!closed && body.length && isBlank(body[body.length - 1])) body.pop();  // still streaming
    const pre = make("pre");
    const code = make("code");
    if (/^[\w+#.-]{1,40}$/.test(language)) code.className = `language-${language}`;
    code.textContent = body.join("\n");
    pre.append(code);
    into.append(pre);
    return i;
  }

  function quote(lines, i, into) {
    const body = [];
    while (i < lines.length) {
      const match = QUOTE.exec(lines[i]);
      if (match) {
        body.push(match[1]);
      } else if (!isBlank(lines[i]) && body.length && !isBlank(body[body.length - 1]) &&
                 !interrupts(lines[i])) {
        body.push(lines[i]);  // a lazy continuation of the quoted paragraph
      } else {
        break;
      }
      i += 1;
    }
    const node = make("blockquote");
    blocks(body, node);
    into.append(node);
    return i;
  }

  function list(lines, i, into) {
    const first = ITEM.exec(lines[i]);
    const ordered = /\d/.test(first[2]);
    const kind = first[2].slice(-1);  // the bullet, or the ordered list's delimiter
    const node = make(ordered ? "ol" : "ul");
    if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
    const items = [];
    let loose = false;
    while (i < lines.length) {
      const match = ITEM.exec(lines[i]);
      if (!match || HR.test(lines[i]) || /\d/.test(match[2]) !== ordered ||
          match[2].slice(-1) !== kind) break;
      const gap = match[3] ? match[3].replace(/\t/g, "    ").length : 0;
      const content = match[4] || "";
      const wide = gap > 4 || !content;  // the item's text starts one space after the marker
      const indent = match[1].length + match[2].length + (wide ? 1 : gap);
      const body = [wide && content ? " ".repeat(gap - 1) + content : content];
      i += 1;
      let blank = !content;
      while (i < lines.length) {
        const line = lines[i];
        if (isBlank(line)) {
          body.push("");
          blank = true;
        } else if (indentOf(line) >= indent) {
          body.push(line.slice(indent));
          blank = false;
        } else if (!blank && !interrupts(line) && !ITEM.test(line)) {
          body.push(line.trim());  // a lazy continuation of the item's paragraph
        } else {
          break;
        }
        i += 1;
      }
      let trailing = 0;
      while (body.length && isBlank(body[body.length - 1])) {
        body.pop();
        trailing += 1;
      }
      const inner = body.findIndex(isBlank);
      if (inner > 0 && inner < body.length - 1) loose = true;
      items.push(body);
      const next = i < lines.length ? ITEM.exec(lines[i]) : null;
      const sibling = next && !HR.test(lines[i]) && /\d/.test(next[2]) === ordered &&
        next[2].slice(-1) === kind;
      if (trailing && sibling) loose = true;
      if (!sibling) break;
    }
    for (const body of items) {
      const item = make("li");
      const task = /^\[([ xX])\][ \t]+/.exec(body[0]);  // - [x] a task list item
      if (task) body[0] = body[0].slice(task[0].length);
      blocks(body, item);
      if (!loose) {  // a tight list: its items' paragraphs are not wrapped in <p>
        for (const child of Array.from(item.children)) {
          if (child.tagName === "P") child.replaceWith(...child.childNodes);
        }
      }
      if (task) {
        const box = make("span", "task-box");
        box.textContent = task[1] === " " ? "☐ " : "☑ ";
        item.className = "task";
        (item.firstChild && item.firstChild.tagName === "P" ? item.firstChild : item).prepend(box);
      }
      node.append(item);
    }
    into.append(node);
    return i;
  }

  function cells(line) {  // a table row's cells: split on | outside code spans, not on \|
    let row = line.trim();
    if (row.startsWith("|")) row = row.slice(1);
    if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
    const out = [];
    let cell = "";
    let code = false;
    for (let k = 0; k < row.length; k += 1) {
      const ch = row[k];
      if (ch === "\\" && row[k + 1] === "|") {
        cell += "|";
        k += 1;
      } else if (ch === "|" && !code) {
        out.push(cell.trim());
        cell = "";
      } else {
        if (ch === "`") code = !code;
        cell += ch;
      }
    }
    out.push(cell.trim());
    return out;
  }

  function tableAt(lines, i) {
    return i + 1 < lines.length && lines[i].includes("|") && lines[i + 1].includes("|") &&
      TABLE_DELIMITER.test(lines[i + 1]) && cells(lines[i]).length === cells(lines[i + 1]).length;
  }

  function table(lines, i, into) {
    const head = cells(lines[i]);
    const align = cells(lines[i + 1]).map((cell) => {
      if (cell.startsWith(":") && cell.endsWith(":")) return "center";
      if (cell.endsWith(":")) return "right";
      return cell.startsWith(":") ? "left" : "";
    });
    const row = (values, tag) => {
      const tr = make("tr");
      head.forEach((_, column) => {
        const cell = make(tag);
        if (align[column]) cell.style.textAlign = align[column];
        inline(values[column] || "", cell);
        tr.append(cell);
      });
      return tr;
    };
    const node = make("table");
    const thead = make("thead");
    thead.append(row(head, "th"));
    const tbody = make("tbody");
    i += 2;
    while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|") &&
           !interrupts(lines[i])) {
      tbody.append(row(cells(lines[i]), "td"));
      i += 1;
    }
    node.append(thead, tbody);
    const scroller = make("div", "table-scroll");  // wide tables scroll, not the page
    scroller.append(node);
    into.append(scroller);
    return i;
  }

  // -- inlines --------------------------------------------------------------------------------
  function safeUrl(url) {
    const trimmed = url.trim();
    return SAFE_URL.test(trimmed) ? trimmed : null;
  }

  function link(href, title) {
    const node = make("a");
    node.href = href;
    node.rel = "noopener noreferrer";
    node.target = "_blank";
    if (title) node.title = title;
    return node;
  }

  function codeSpanEnd(text, i) {  // [start of content, end of content, after] or null
    let run = 0;
    while (text[i + run] === "`") run += 1;
    let k = i + run;
    while (k < text.length) {
      const close = text.indexOf("`", k);
      if (close < 0) return null;
      let closing = 0;
      while (text[close + closing] === "`") closing += 1;
      if (closing === run) return [i + run, close, close + run];
      k = close + closing;
    }
    return null;
  }

  function unescape(text) {
    return text.replace(/\\([!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~])/g, "$1");
  }

  // `[label](destination "title")` starting at text[i] === "[": its parts, or null
  function linkAt(text, i) {
    let depth = 0;
    let j = i;
    for (; j < text.length; j += 1) {
      const ch = text[j];
      if (ch === "\\") {
        j += 1;
      } else if (ch === "`") {
        const span = codeSpanEnd(text, j);
        if (span) j = span[2] - 1;
      } else if (ch === "[") {
        depth += 1;
      } else if (ch === "]") {
        depth -= 1;
        if (depth === 0) break;
      }
    }
    if (j >= text.length || text[j + 1] !== "(") return null;
    let k = j + 2;
    while (SPACE.test(text[k] || "")) k += 1;
    let destination;
    if (text[k] === "<") {
      const close = text.indexOf(">", k);
      if (close < 0 || text.slice(k, close).includes("\n")) return null;
      destination = text.slice(k + 1, close);
      k = close + 1;
    } else {
      const start = k;
      let parens = 0;
      while (k < text.length && !SPACE.test(text[k])) {
        if (text[k] === "\\") {
          k += 1;
        } else if (text[k] === "(") {
          parens += 1;
        } else if (text[k] === ")") {
          if (parens === 0) break;
          parens -= 1;
        }
        k += 1;
      }
      destination = text.slice(start, k);
    }
    while (SPACE.test(text[k] || "")) k += 1;
    let title = "";
    const quote = { '"': '"', "'": "'", "(": ")" }[text[k]];
    if (quote && k > j + 2) {
      const close = text.indexOf(quote, k + 1);
      if (close < 0) return null;
      title = text.slice(k + 1, close);
      k = close + 1;
      while (SPACE.test(text[k] || "")) k += 1;
    }
    if (text[k] !== ")") return null;
    return { label: text.slice(i + 1, j), destination: unescape(destination),
             title: unescape(title), end: k + 1 };
  }

  // a closing delimiter run for an opener of `size` `ch`s whose content starts at `from`
  function closerAt(text, from, ch, size) {
    let k = from + 1;  // the content is not empty
    while (k < text.length) {
      if (text[k] === "`") {
        const span = codeSpanEnd(text, k);
        if (span) {
          k = span[2];
          continue;
        }
      }
      if (text[k] === "\\") {
        k += 2;
        continue;
      }
      if (text[k] !== ch) {
        k += 1;
        continue;
      }
      let run = 0;
      while (text[k + run] === ch) run += 1;
      const close = k + run - size;  // the run's last `size` characters close it
      const fits = size === 1 ? run !== 2 : run >= size;  // ** inside *…* is a nested strong
      const after = text[k + run] || " ";
      if (fits && !SPACE.test(text[k - 1]) && !(ch === "_" && WORD.test(after))) return close;
      k += run;
    }
    return -1;
  }

  // **strong**, *em*, __strong__, _em_ or ~~del~~ at text[i]: [tag, start, end, next] or null
  function emphasisAt(text, i) {
    const ch = text[i];
    let run = 0;
    while (text[i + run] === ch) run += 1;
    const before = i > 0 ? text[i - 1] : " ";
    const after = text[i + run] || " ";
    if (SPACE.test(after)) return null;
    if (ch === "_" && WORD.test(before)) return null;  // snake_case is not emphasis
    const sizes = ch === "~" ? (run === 2 ? [2] : []) : run >= 2 ? [2, 1] : [1];
    for (const size of sizes) {
      const close = closerAt(text, i + size, ch, size);
      if (close >= 0) {
        const tag = ch === "~" ? "del" : size === 2 ? "strong" : "em";
        return [tag, i + size, close, close + size];
      }
    }
    return null;
  }

  function inline(text, into, inLink = false) {
    let buffer = "";
    const flush = () => {
      if (buffer) into.append(document.createTextNode(buffer));
      buffer = "";
    };
    let i = 0;
    while (i < text.length) {
      const ch = text[i];
      if (ch === "\\" && PUNCTUATION.test(text[i + 1] || "")) {
        buffer += text[i + 1];
        i += 2;
        continue;
      }
      if (ch === "`") {
        const span = codeSpanEnd(text, i);
        if (span) {
          let content = text.slice(span[0], span[1]).replace(/\n/g, " ");
          if (/^ .*[^ ].* $/.test(content)) content = content.slice(1, -1);
          flush();
          const code = make("code");
          code.textContent = content;
          into.append(code);
          i = span[2];
        } else {
          let run = 0;
          while (text[i + run] === "`") run += 1;
          buffer += text.slice(i, i + run);
          i += run;
        }
        continue;
      }
      if (!inLink && (ch === "[" || (ch === "!" && text[i + 1] === "["))) {
        const image = ch === "!";
        const parts = linkAt(text, image ? i + 1 : i);
        if (parts) {
          const href = safeUrl(parts.destination);
          if (href) {
            flush();
            const node = link(href, parts.title);
            if (image) node.textContent = parts.label.trim() || href;  // not loaded: a link
            else inline(parts.label, node, true);
            into.append(node);
          } else {
            buffer += text.slice(i, parts.end);  // shown as written
          }
          i = parts.end;
          continue;
        }
      }
      if (ch === "<" && !inLink) {
        const auto = /^<((?:https?:\/\/|mailto:)[^\s<>]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)>/i
          .exec(text.slice(i));
        if (auto) {
          const href = safeUrl(auto[1].includes(":") ? auto[1] : `mailto:${auto[1]}`);
          if (href) {
            flush();
            const node = link(href);
            node.textContent = auto[1];
            into.append(node);
            i += auto[0].length;
            continue;
          }
        }
      }
      if ((ch === "h" || ch === "H") && !inLink && !WORD.test(text[i - 1] || " ")) {
        const bare = BARE_URL.exec(text.slice(i));
        if (bare) {
          let url = bare[0].replace(/[.,:;!?'"*_~]+$/, "");
          while (url.endsWith(")") &&
                 (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) {
            url = url.slice(0, -1);
          }
          const href = safeUrl(url);
          if (href && url.length > "https://".length) {
            flush();
            const node = link(href);
            node.textContent = url;
            into.append(node);
            i += url.length;
            continue;
          }
        }
      }
      if (ch === "*" || ch === "_" || ch === "~") {
        const span = emphasisAt(text, i);
        if (span) {
          flush();
          const node = make(span[0]);
          inline(text.slice(span[1], span[2]), node, inLink);
          into.append(node);
          i = span[3];
          continue;
        }
      }
      buffer += ch;
      i += 1;
    }
    flush();
  }

  function renderMarkdown(source) {
    const fragment = document.createDocumentFragment();
    const lines = String(source || "").replace(/\r\n?/g, "\n").split("\n")
      .map((line) => line.replace(/^\t+/, (tabs) => "    ".repeat(tabs.length)));
    blocks(lines, fragment);
    return fragment;
  }

  window.renderMarkdown = renderMarkdown;
})();
