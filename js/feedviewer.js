// Live feed viewer of kachery-jupyter (anywidget front end).
//
// The kernel follows the feed and sends its messages here in batches, as custom
// messages {type: "messages", rows: [[number, time, user, json_text], ...], total};
// they are kept in one store per model (shared by every view of the widget), never
// in a trait. This module asks for them with {type: "ready", from: n} when it starts
// and whenever a batch does not continue where the store ends (a batch lost while
// the page was away), so the store always holds consecutive numbers.
//
// Only the rows in view are in the DOM: the list is a fixed-height scroll box whose
// spacer is as tall as all rows (one row height each), and a redraw places the few
// visible rows over it. The expanded JSON of a chosen row shows in a detail pane
// below the list, so every row keeps the same height. Every value from the feed is
// set with textContent, never as HTML.

import { OVERSCAN, h, visibleWindow } from "./common.js";

export { OVERSCAN, visibleWindow };

export const ROW_HEIGHT = 24; // px; keep in step with .kc-feed-row in feedviewer.css
const FILTER_DELAY_MS = 120;

// ------------------------------------------------------------------ pure logic

/** Whether a row [number, time, user, text] matches `query` (already lower-cased); "" matches all. */
export function matches(row, query) {
  if (!query) return true;
  if (row[3].toLowerCase().includes(query)) return true;
  if (row[2] && row[2].toLowerCase().includes(query)) return true;
  return query.startsWith("#") && String(row[0]) === query.slice(1);
}

/** The rows [first, last) to draw for a scroll position: those in view plus `overscan` each side. */

/** `time` (epoch seconds) as local "YYYY-MM-DD HH:MM:SS"; "" when it is not a number. */
export function formatTime(time, withMillis = false) {
  if (typeof time !== "number" || !Number.isFinite(time)) return "";
  const d = new Date(time * 1000);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  const text = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  return withMillis ? `${text}.${p(d.getMilliseconds(), 3)}` : text;
}

/** A message's JSON text indented for reading; the text itself when it does not parse. */
export function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** Rows of one feed, numbers consecutive from `start`; `rows[i][0] === start + i`. */
export class FeedStore {
  constructor(start = 0) {
    this.start = start;
    this.rows = [];
    this.total = 0; // messages the feed has, as the kernel last said
  }

  get next() {
    return this.start + this.rows.length;
  }

  /** Adds the rows that continue the store; returns {added, missing}: `missing` is the number
   * to ask for again when the batch starts past the store's end (else null). */
  ingest(rows, total) {
    let added = 0;
    let missing = null;
    for (const row of rows) {
      const n = row[0];
      if (n < this.next) continue; // already held (a batch sent again to another view)
      if (n > this.next) {
        missing = this.next;
        break;
      }
      this.rows.push(row);
      added += 1;
    }
    if (typeof total === "number") this.total = Math.max(this.total, total);
    this.total = Math.max(this.total, this.next);
    return { added, missing };
  }
}

/** What the list shows of a store: the rows up to `shown` (a pause holds it), filtered, ordered. */
export class FeedView {
  constructor(store) {
    this.store = store;
    this.shown = store.rows.length;
    this.query = "";
    this.index = null; // indices of matching rows among the shown ones; null: no filter
    this.newestFirst = true;
  }

  get count() {
    return this.index ? this.index.length : this.shown;
  }

  /** Shows rows up to `shown`; returns how many more the list has (matching rows only). */
  extend(shown = this.store.rows.length) {
    const before = this.count;
    if (this.index) {
      const rows = this.store.rows;
      for (let i = this.shown; i < shown; i++) if (matches(rows[i], this.query)) this.index.push(i);
    }
    this.shown = Math.max(this.shown, shown);
    return this.count - before;
  }

  setFilter(text) {
    const query = text.trim().toLowerCase();
    if (query === this.query) return false;
    this.query = query;
    if (!query) {
      this.index = null;
      return true;
    }
    const rows = this.store.rows;
    const index = [];
    for (let i = 0; i < this.shown; i++) if (matches(rows[i], query)) index.push(i);
    this.index = index;
    return true;
  }

  /** Index in store.rows of the row drawn at list position `position`. */
  rowIndex(position) {
    const k = this.newestFirst ? this.count - 1 - position : position;
    return this.index ? this.index[k] : k;
  }

  rowAt(position) {
    return this.store.rows[this.rowIndex(position)];
  }

  /** List position of the row with message number `number`, or -1 when it is not listed. */
  positionOf(number) {
    const i = number - this.store.start;
    if (i < 0 || i >= this.shown) return -1;
    let k = i;
    if (this.index) {
      k = lowerBound(this.index, i);
      if (this.index[k] !== i) return -1;
    }
    return this.newestFirst ? this.count - 1 - k : k;
  }
}

function lowerBound(sorted, value) {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// ------------------------------------------------------------------ one store per model

const stores = new WeakMap();

function connect(model) {
  let s = stores.get(model);
  if (s) return s;
  s = { store: new FeedStore(model.get("start") || 0), views: new Set(), asked: null, appendResult: null };
  stores.set(model, s);
  const ask = (from) => {
    if (s.asked === from) return; // already asked; the kernel answers from there
    s.asked = from;
    model.send({ type: "ready", from });
  };
  model.on("msg:custom", (msg) => {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "messages") {
      const { added, missing } = s.store.ingest(msg.rows || [], msg.total);
      if (added) s.asked = null;
      if (missing !== null) ask(missing);
      for (const v of s.views) v.changed(added);
    } else if (msg.type === "append_result") {
      s.appendResult = msg;
      for (const v of s.views) v.appended(msg);
    }
  });
  ask(s.store.next);
  return s;
}

// ------------------------------------------------------------------ drawing


function button(label, action, onClick, title = "") {
  return h("button", { className: "kc-button", type: "button", dataset: { action }, text: label, onclick: onClick, ...(title ? { title } : {}) });
}

const number = (n) => n.toLocaleString("en-US");

/** Draws one view of the model into `el`; returns the view (tests call `redraw` directly). */
export function createViewer(model, el, { schedule } = {}) {
  const shared = connect(model);
  const store = shared.store;
  const view = new FeedView(store);
  const later = schedule || globalThis.requestAnimationFrame?.bind(globalThis) || ((f) => setTimeout(f, 16));
  let paused = false;
  let selected = null; // message number shown in the detail pane
  let pending = false;
  let filterTimer = null;

  const title = h("span", { className: "kc-feed-title" });
  const status = h("span", { className: "kc-feed-status" });
  const orderButton = button("", "order", () => {
    view.newestFirst = !view.newestFirst;
    list.scrollTop = 0;
    redraw();
  });
  const pauseButton = button("Pause", "pause", () => {
    paused = !paused;
    if (!paused) view.extend();
    redraw();
  });
  const filter = h("input", { className: "kc-feed-filter", type: "search", placeholder: "filter", "aria-label": "filter messages" });
  filter.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(applyFilter, FILTER_DELAY_MS);
  });
  filter.addEventListener("keydown", (e) => e.key === "Enter" && applyFilter());
  const startButton = button("Start", "start", () => jump("start"), "jump to the first message");
  const endButton = button("End", "end", () => jump("end"), "jump to the newest message");
  const count = h("span", { className: "kc-feed-count", "aria-live": "polite" });

  const spacer = h("div", { className: "kc-feed-spacer" });
  const layer = h("div", { className: "kc-feed-rows" });
  const empty = h("div", { className: "kc-feed-empty" });
  const list = h("div", { className: "kc-feed-list", tabindex: "0", role: "list", "aria-label": "feed messages" }, [spacer, layer, empty]);
  list.addEventListener("scroll", () => request());
  list.addEventListener("click", (e) => {
    const row = e.target.closest?.(".kc-feed-row");
    if (row) toggle(Number(row.dataset.number));
  });
  list.addEventListener("keydown", (e) => {
    const row = e.target.closest?.(".kc-feed-row");
    if (row && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      toggle(Number(row.dataset.number));
    }
  });

  const detailHead = h("span", { className: "kc-feed-detail-head" });
  const detailBody = h("pre", { className: "kc-feed-json-full" });
  const detail = h("div", { className: "kc-feed-detail" }, [
    h("div", { className: "kc-feed-detail-bar" }, [detailHead, button("Collapse", "collapse", () => toggle(selected))]),
    detailBody,
  ]);

  const appendText = h("textarea", { className: "kc-feed-append-text", rows: "2", placeholder: '{"key": "value"}', "aria-label": "message to append (a JSON object)" });
  const appendNote = h("p", { className: "kc-feed-append-note" });
  const appendBox = h("div", { className: "kc-feed-append" }, [
    h("div", { className: "kc-row" }, [appendText, button("Append", "append", sendAppend)]),
    appendNote,
  ]);
  appendText.addEventListener("keydown", (e) => (e.ctrlKey || e.metaKey) && e.key === "Enter" && sendAppend());

  const root = h("div", { className: "kc-theme kc-feed" }, [
    h("div", { className: "kc-feed-head" }, [title, status]),
    h("div", { className: "kc-feed-toolbar" }, [orderButton, pauseButton, filter, startButton, endButton, count]),
    list,
    detail,
    appendBox,
  ]);
  el.replaceChildren(root);

  function sendAppend() {
    const text = appendText.value.trim();
    if (!text) return;
    appendNote.textContent = "Appending…";
    appendNote.className = "kc-feed-append-note";
    model.send({ type: "append", text });
  }

  function applyFilter() {
    clearTimeout(filterTimer);
    if (view.setFilter(filter.value)) {
      list.scrollTop = 0;
      redraw();
    }
  }

  function jump(where) {
    // "start" is message 0: the bottom of a newest-first list, the top of an oldest-first one.
    const top = (where === "start") !== view.newestFirst;
    list.scrollTop = top ? 0 : view.count * ROW_HEIGHT;
    redraw();
  }

  function toggle(n) {
    selected = selected === n || !Number.isFinite(n) ? null : n;
    redraw();
  }

  function request() {
    if (pending) return;
    pending = true;
    later(() => {
      pending = false;
      redraw();
    });
  }

  // New rows in the store: list them (unless paused), keeping the rows the user reads in place.
  function changed(added) {
    if (added && !paused) {
      const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - ROW_HEIGHT;
      const grown = view.extend();
      spacer.style.height = `${view.count * ROW_HEIGHT}px`; // before scrolling, which it bounds
      if (view.newestFirst && list.scrollTop > 0) list.scrollTop += grown * ROW_HEIGHT;
      else if (!view.newestFirst && atBottom && grown) list.scrollTop = view.count * ROW_HEIGHT; // follow the tail
    }
    request();
  }

  function appended(msg) {
    if (msg.ok) {
      appendText.value = "";
      appendNote.textContent = `Appended as message #${msg.number}.`;
      appendNote.className = "kc-feed-append-note kc-ok";
    } else {
      appendNote.textContent = msg.error || "The message was not appended.";
      appendNote.className = "kc-feed-append-note kc-error";
    }
  }

  function drawRow(row, position) {
    const [n, time, user, text] = row;
    const open = n === selected;
    return h("div", {
      className: open ? "kc-feed-row kc-selected" : "kc-feed-row",
      role: "listitem",
      tabindex: "-1",
      "aria-expanded": open ? "true" : "false",
      dataset: { number: String(n) },
      style: `top:${position * ROW_HEIGHT}px`,
    }, [
      h("span", { className: "kc-feed-toggle", text: open ? "\u25BE" : "\u25B8", "aria-hidden": "true" }),
      h("span", { className: "kc-feed-num", text: `#${n}` }),
      h("span", { className: "kc-feed-time", text: formatTime(time), title: formatTime(time, true) }),
      h("span", { className: "kc-feed-user", text: user || "\u2014", title: user || "author not shown" }),
      h("span", { className: "kc-feed-json", text }),
    ]);
  }

  function redraw() {
    const total = view.count;
    spacer.style.height = `${total * ROW_HEIGHT}px`;
    const height = list.clientHeight || 360;
    const { first, last } = visibleWindow(list.scrollTop, height, ROW_HEIGHT, total);
    const rows = [];
    for (let p = first; p < last; p++) rows.push(drawRow(view.rowAt(p), p));
    layer.replaceChildren(...rows);

    const label = model.get("label");
    title.textContent = label ? `${label} \u00b7 ${model.get("feed_uri")}` : model.get("feed_uri") || "feed";
    const state = model.get("status") || "";
    status.textContent = state === "error" ? model.get("status_message") || "error" : state;
    status.className = `kc-feed-status kc-status-${state || "none"}`;
    orderButton.textContent = view.newestFirst ? "Newest first" : "Oldest first";
    orderButton.setAttribute("aria-label", `order: ${orderButton.textContent} (click to reverse)`);
    pauseButton.textContent = paused ? "Resume" : "Pause";
    pauseButton.setAttribute("aria-pressed", paused ? "true" : "false");

    const held = store.rows.length;
    const parts = [];
    if (view.index) parts.push(`${number(view.count)} of ${number(view.shown)} match`);
    else parts.push(`${number(view.shown)} message${view.shown === 1 ? "" : "s"}`);
    if (paused && held > view.shown) parts.push(`paused, ${number(held - view.shown)} new`);
    else if (paused) parts.push("paused");
    if (store.total > store.next) parts.push(`loading ${number(held)} of ${number(store.total - store.start)}`);
    count.textContent = parts.join(" \u00b7 ");
    empty.textContent = total ? "" : view.index ? "No message matches the filter." : "No messages yet.";
    empty.hidden = total > 0;

    const row = selected === null ? null : store.rows[selected - store.start];
    detail.hidden = !row;
    if (row) {
      detailHead.textContent = `#${row[0]} \u00b7 ${formatTime(row[1], true)} \u00b7 ${row[2] || "\u2014"}`;
      detailBody.textContent = prettyJson(row[3]);
    }
    appendBox.hidden = !model.get("can_append");
  }

  const self = { redraw, changed, appended, view, list, root, get paused() { return paused; } };
  shared.views.add(self);
  const traits = ["status", "status_message", "can_append", "label", "feed_uri"];
  for (const name of traits) model.on(`change:${name}`, request);
  redraw();
  return {
    ...self,
    dispose() {
      shared.views.delete(self);
      clearTimeout(filterTimer);
      for (const name of traits) model.off(`change:${name}`, request);
    },
  };
}

function initialize({ model }) {
  connect(model); // listen and ask for the messages as soon as the model exists
}

function render({ model, el }) {
  const viewer = createViewer(model, el);
  return () => viewer.dispose();
}

export default { initialize, render };
