import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { FakeModel, click, installDom } from "./fake_model.mjs";

installDom();
const {
  default: widget,
  FeedStore,
  FeedView,
  ROW_HEIGHT,
  createViewer,
  formatTime,
  matches,
  prettyJson,
  visibleWindow,
} = await import("../feedviewer.js");

const T0 = 1_700_000_000;

function row(n, message = { n }, user = "ada@example.org") {
  return [n, T0 + n, user, JSON.stringify(message)];
}

function rows(from, to, make = (n) => row(n)) {
  const out = [];
  for (let n = from; n < to; n++) out.push(make(n));
  return out;
}

function model(state = {}) {
  return new FakeModel({ feed_uri: "kachery-feed://f1", label: "", start: 0, can_append: false, status: "live", status_message: "", ...state });
}

// What the kernel's self.send() does: a custom message to every listener of the model.
function kernelSends(m, msg) {
  for (const fn of m.handlers.get("msg:custom") ?? []) fn(msg);
}

const sync = { schedule: (f) => f() };

function shownNumbers(el) {
  return [...el.querySelectorAll(".kc-feed-row")].map((r) => Number(r.dataset.number));
}

let el;
beforeEach(() => {
  el = document.createElement("div");
  document.body.replaceChildren(el);
});

// ------------------------------------------------------------------ pure logic

test("filter: JSON text and author, case-insensitive; #N is a message number", () => {
  const r = row(12, { status: "Done", value: 3 }, "Ada@Example.org");
  assert.equal(matches(r, ""), true);
  assert.equal(matches(r, "done"), true);
  assert.equal(matches(r, '"value":3'), true);
  assert.equal(matches(r, "ada@example"), true);
  assert.equal(matches(r, "#12"), true);
  assert.equal(matches(r, "#1"), false);
  assert.equal(matches(r, "missing"), false);
  assert.equal(matches([0, T0, null, "{}"], "ada"), false, "no author is no match, not an error");
});

test("visible window: the rows in view plus the overscan, clamped to the list", () => {
  assert.deepEqual(visibleWindow(0, 240, 24, 0), { first: 0, last: 0 });
  assert.deepEqual(visibleWindow(0, 240, 24, 5, 6), { first: 0, last: 5 });
  assert.deepEqual(visibleWindow(0, 240, 24, 1000, 6), { first: 0, last: 16 });
  assert.deepEqual(visibleWindow(2400, 240, 24, 1000, 6), { first: 94, last: 116 });
  assert.deepEqual(visibleWindow(24 * 999, 240, 24, 1000, 6), { first: 993, last: 1000 });
  assert.deepEqual(visibleWindow(1e9, 240, 24, 1000, 6), { first: 1000, last: 1000 }, "scrolled past the end: nothing");
  for (const top of [0, 12, 1234567, 24 * 99_990]) {
    const { first, last } = visibleWindow(top, 360, 24, 100_000, 6);
    assert.ok(last - first <= 360 / 24 + 1 + 12, `${top}: ${first}..${last}`);
  }
});

test("store: consecutive numbers only; repeats are skipped; a gap asks again from the store's end", () => {
  const store = new FeedStore(0);
  assert.deepEqual(store.ingest(rows(0, 3), 10), { added: 3, missing: null });
  assert.deepEqual(store.ingest(rows(1, 5), 10), { added: 2, missing: null });
  assert.deepEqual(store.ingest(rows(7, 9), 10), { added: 0, missing: 5 });
  assert.equal(store.next, 5);
  assert.equal(store.total, 10);
  const late = new FeedStore(100);
  assert.deepEqual(late.ingest(rows(98, 102), 102), { added: 2, missing: null });
  assert.deepEqual(late.rows.map((r) => r[0]), [100, 101]);
});

test("view: newest first or oldest first, with and without a filter", () => {
  const store = new FeedStore(0);
  store.ingest(rows(0, 10, (n) => row(n, { even: n % 2 === 0 })), 10);
  const view = new FeedView(store);
  assert.equal(view.count, 10);
  assert.equal(view.rowAt(0)[0], 9);
  view.newestFirst = false;
  assert.equal(view.rowAt(0)[0], 0);
  view.setFilter('"even":true');
  assert.equal(view.count, 5);
  assert.deepEqual([0, 1, 2, 3, 4].map((p) => view.rowAt(p)[0]), [0, 2, 4, 6, 8]);
  assert.equal(view.positionOf(6), 3);
  assert.equal(view.positionOf(7), -1);
  view.newestFirst = true;
  assert.deepEqual([0, 1, 2, 3, 4].map((p) => view.rowAt(p)[0]), [8, 6, 4, 2, 0]);
  assert.equal(view.positionOf(8), 0);
  store.ingest(rows(10, 13, (n) => row(n, { even: n % 2 === 0 })), 13);
  assert.equal(view.extend(), 2, "only the new matching rows count (10 and 12)");
  assert.equal(view.rowAt(0)[0], 12);
  view.setFilter("  ");
  assert.equal(view.count, 13);
});

test("formatting: local date and time; JSON indented; text that is not JSON kept as it is", () => {
  assert.match(formatTime(T0), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  assert.match(formatTime(T0 + 0.25, true), /\.250$/);
  assert.equal(formatTime(null), "");
  assert.equal(prettyJson('{"a":[1,2]}'), '{\n  "a": [\n    1,\n    2\n  ]\n}');
  assert.equal(prettyJson("{oops"), "{oops");
});

// ------------------------------------------------------------------ the widget

test("it asks the kernel for the messages from its start, and again from where a gap begins", async () => {
  const m = model({ start: 5 });
  widget.initialize({ model: m });
  widget.render({ model: m, el });
  assert.deepEqual(m.sent, [{ type: "ready", from: 5 }], "one request per model, not per view");
  kernelSends(m, { type: "messages", rows: rows(5, 8), total: 8 });
  kernelSends(m, { type: "messages", rows: rows(10, 12), total: 12 });
  kernelSends(m, { type: "messages", rows: rows(11, 13), total: 13 });
  assert.deepEqual(m.sent.slice(1), [{ type: "ready", from: 8 }], "asked once for the missing part");
  kernelSends(m, { type: "messages", rows: rows(8, 13), total: 13 });
  await new Promise((resolve) => setTimeout(resolve, 50)); // the next frame redraws
  assert.match(el.querySelector(".kc-feed-count").textContent, /^8 messages$/);
});

test("new messages appear without any action, newest on top; the order toggle reverses", () => {
  const m = model();
  const v = createViewer(m, el, sync);
  assert.match(el.textContent, /No messages yet/);
  kernelSends(m, { type: "messages", rows: rows(0, 3), total: 3 });
  assert.deepEqual(shownNumbers(el), [2, 1, 0]);
  kernelSends(m, { type: "messages", rows: [row(3, { step: "four" })], total: 4 });
  assert.deepEqual(shownNumbers(el), [3, 2, 1, 0]);
  click(el, "order");
  assert.deepEqual(shownNumbers(el), [0, 1, 2, 3]);
  assert.equal(el.querySelector('[data-action="order"]').textContent, "Oldest first");
  v.dispose();
});

test("pause holds the list and counts what arrives; resume shows it", () => {
  const m = model();
  createViewer(m, el, sync);
  kernelSends(m, { type: "messages", rows: rows(0, 2), total: 2 });
  click(el, "pause");
  kernelSends(m, { type: "messages", rows: rows(2, 5), total: 5 });
  assert.deepEqual(shownNumbers(el), [1, 0]);
  assert.match(el.querySelector(".kc-feed-count").textContent, /2 messages · paused, 3 new/);
  assert.equal(el.querySelector('[data-action="pause"]').textContent, "Resume");
  click(el, "pause");
  assert.deepEqual(shownNumbers(el), [4, 3, 2, 1, 0]);
  assert.match(el.querySelector(".kc-feed-count").textContent, /^5 messages$/);
});

test("the filter box narrows the list and says how many match", () => {
  const m = model();
  createViewer(m, el, sync);
  kernelSends(m, { type: "messages", rows: rows(0, 20, (n) => row(n, { kind: n % 5 === 0 ? "spike" : "tick" })), total: 20 });
  const input = el.querySelector(".kc-feed-filter");
  input.value = "SPIKE";
  input.dispatchEvent(new window.KeyboardEvent("keydown", { key: "Enter" }));
  assert.deepEqual(shownNumbers(el), [15, 10, 5, 0]);
  assert.match(el.querySelector(".kc-feed-count").textContent, /4 of 20 match/);
  kernelSends(m, { type: "messages", rows: [row(20, { kind: "spike" }), row(21, { kind: "tick" })], total: 22 });
  assert.deepEqual(shownNumbers(el), [20, 15, 10, 5, 0], "new messages are filtered too");
  input.value = "nothing-like-this";
  input.dispatchEvent(new window.KeyboardEvent("keydown", { key: "Enter" }));
  assert.match(el.textContent, /No message matches the filter/);
});

test("100,000 messages: only the rows in view are in the DOM", () => {
  const m = model();
  createViewer(m, el, sync);
  for (let from = 0; from < 100_000; from += 2000) {
    kernelSends(m, { type: "messages", rows: rows(from, from + 2000), total: 100_000 });
  }
  const drawn = el.querySelectorAll(".kc-feed-row").length;
  assert.ok(drawn > 0 && drawn < 60, `${drawn} rows in the DOM`);
  assert.equal(el.querySelector(".kc-feed-spacer").style.height, `${100_000 * ROW_HEIGHT}px`);
  assert.match(el.querySelector(".kc-feed-count").textContent, /^100,000 messages$/);
  assert.equal(shownNumbers(el)[0], 99_999);
});

test("a row opens into the detail pane with indented JSON, and collapses", () => {
  const m = model();
  createViewer(m, el, sync);
  kernelSends(m, { type: "messages", rows: [row(0, { a: { b: [1, 2] } })], total: 1 });
  const detail = el.querySelector(".kc-feed-detail");
  assert.equal(detail.hidden, true);
  el.querySelector(".kc-feed-row").click();
  assert.equal(detail.hidden, false);
  assert.equal(el.querySelector(".kc-feed-json-full").textContent, prettyJson('{"a":{"b":[1,2]}}'));
  assert.equal(el.querySelector(".kc-feed-row").getAttribute("aria-expanded"), "true");
  click(el, "collapse");
  assert.equal(el.querySelector(".kc-feed-detail").hidden, true);
});

test("values from the feed are text, never markup", () => {
  const evil = "<img src=x onerror=alert(1)>";
  const m = model({ label: "<b>label</b>", feed_uri: "kachery-feed://<i>x</i>" });
  createViewer(m, el, sync);
  kernelSends(m, { type: "messages", rows: [[0, T0, `<script>alert(2)</script>`, JSON.stringify({ html: evil })]], total: 1 });
  el.querySelector(".kc-feed-row").click();
  assert.equal(el.querySelectorAll("img, script, b, i").length, 0);
  assert.ok(el.querySelector(".kc-feed-json").textContent.includes(evil));
  assert.ok(el.querySelector(".kc-feed-json-full").textContent.includes(evil));
  assert.equal(el.querySelector(".kc-feed-user").textContent, "<script>alert(2)</script>");
  assert.ok(el.querySelector(".kc-feed-title").textContent.startsWith("<b>label</b>"));
});

test("the append box shows only when the kernel may append; it sends the text and shows the answer", () => {
  const m = model({ can_append: false });
  const v = createViewer(m, el, sync);
  assert.equal(el.querySelector(".kc-feed-append").hidden, true);
  m.set("can_append", true);
  assert.equal(el.querySelector(".kc-feed-append").hidden, false);
  const text = el.querySelector(".kc-feed-append-text");
  click(el, "append");
  assert.deepEqual(m.sent.filter((x) => x.type === "append"), [], "empty text is not sent");
  text.value = ' {"step": 1} ';
  click(el, "append");
  assert.deepEqual(m.sent.filter((x) => x.type === "append"), [{ type: "append", text: '{"step": 1}' }]);
  kernelSends(m, { type: "append_result", ok: false, error: "FeedMessageError: message['x'] is NaN" });
  assert.equal(el.querySelector(".kc-feed-append-note").textContent, "FeedMessageError: message['x'] is NaN");
  assert.equal(text.value, ' {"step": 1} ', "kept for correcting");
  kernelSends(m, { type: "append_result", ok: true, number: 7 });
  assert.equal(text.value, "");
  assert.match(el.querySelector(".kc-feed-append-note").textContent, /#7/);
  v.dispose();
});

test("an error from the kernel shows in the status line", () => {
  const m = model();
  createViewer(m, el, sync);
  m.set("status_message", "FeedNotFoundError: no feed f1");
  m.set("status", "error");
  assert.equal(el.querySelector(".kc-feed-status").textContent, "FeedNotFoundError: no feed f1");
});

test("its trait listeners are removed on cleanup; the model's message listener stays for other views", () => {
  const m = model();
  const cleanup = widget.render({ model: m, el });
  const withView = m.listenerCount();
  cleanup();
  assert.equal(m.listenerCount(), 1, `${withView} listeners while shown`);
});
