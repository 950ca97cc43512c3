import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeModel, installDom } from "./fake_model.mjs";

installDom();
const {
  FileStore, ROW_HEIGHT, buildTree, createBrowser, formatSize, jsonNode, suggestName, validName, visibleWindow,
} = await import("../browser.js");

const T0 = 1_700_000_000;
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

function file(i, label = `file_${String(i).padStart(6, "0")}.txt`) {
  const sha1 = i.toString(16).padStart(40, "0");
  return { sha1, label, size: i, created_at: T0 + i, created_by: "ada@example.org", uri: `sha1://${sha1}?label=${label}` };
}

/** A kernel stand-in: answers the browser's requests as kachery_jupyter/_browser.py does. */
function kernel(model, files, extra = {}) {
  const asked = [];
  model.send = (msg) => {
    asked.push(msg);
    let result;
    if (msg.op === "projects") result = [{ project_id: "p1", name: "lab", role: "admin", public_read: false }];
    else if (msg.op === "files") {
      const matching = files.filter((f) => f.label.toLowerCase().includes((msg.q || "").toLowerCase()));
      const start = msg.after ? matching.findIndex((f) => f.sha1 === msg.after) + 1 : 0;
      const page = matching.slice(start, start + 200);
      result = { files: page, next: start + 200 < matching.length ? page[page.length - 1].sha1 : null };
    } else if (extra[msg.op]) result = extra[msg.op](msg);
    else result = {};
    const reply = { type: "response", id: msg.id, ok: !(result instanceof Error), ...(result instanceof Error ? { error: result.message } : { result }) };
    queueMicrotask(() => { for (const fn of model.handlers.get("msg:custom") ?? []) fn(reply); });
  };
  return asked;
}

async function open(files, extra) {
  const model = new FakeModel({ project_id: "p1", user: "ada@example.org", hub_url: "http://hub", opened: null });
  const asked = kernel(model, files, extra);
  const el = document.createElement("div");
  document.body.append(el);
  const view = createBrowser(model, el);
  Object.defineProperty(view.list, "clientHeight", { value: 360, configurable: true });
  for (let i = 0; i < 5; i++) await settle();
  return { model, asked, el, view };
}

test("sizes, names and the visible window", () => {
  assert.equal(formatSize(999), "999 B");
  assert.equal(formatSize(1500), "1.5 kB");
  assert.equal(formatSize(12_345_678), "12 MB");
  assert.equal(formatSize(undefined), "");
  assert.ok(validName("spikes_2") && !validName("2x") && !validName("class") && !validName("a-b") && !validName(""));
  assert.equal(suggestName("spikes run 2.npy"), "spikes_run_2");
  assert.equal(suggestName("2024.json"), "x_2024");
  assert.equal(suggestName("class.txt"), "class_");
  assert.deepEqual(visibleWindow(0, 260, 26, 100_000, 0), { first: 0, last: 10 });
  assert.deepEqual(visibleWindow(26 * 500, 260, 26, 100_000, 2), { first: 498, last: 512 });
});

test("mutable keys become a tree by prefix", () => {
  const tree = buildTree(["runs/b/x", "runs/a", "top", "runs/b"]);
  assert.deepEqual(tree.children.map((c) => c.name), ["runs", "top"]);
  const runs = tree.children[0];
  assert.deepEqual(runs.children.map((c) => [c.name, c.key]), [["a", "runs/a"], ["b", "runs/b"]]);
  assert.deepEqual(runs.children[1].children.map((c) => c.key), ["runs/b/x"]);
});

test("a page that does not continue the store is ignored", () => {
  const store = new FileStore("");
  assert.ok(store.ingest({ files: [file(1)], next: file(1).sha1 }, null));
  assert.ok(!store.ingest({ files: [file(9)], next: null }, "elsewhere"));
  assert.ok(store.ingest({ files: [file(2)], next: null }, file(1).sha1));
  assert.equal(store.rows.length, 2);
  assert.ok(store.done && !store.wantsMore(10));
});

test("JSON previews are collapsible and every value is text", () => {
  const node = jsonNode({ a: [1, 2, { b: "<img src=x onerror=alert(1)>" }] });
  assert.equal(node.tagName, "DETAILS");
  assert.ok(node.open);
  assert.equal(node.querySelectorAll("img").length, 0);
  assert.ok(node.textContent.includes("<img src=x onerror=alert(1)>"));
});

test("100,000 files: pages are asked for as the list scrolls and the DOM holds only the rows in view", async () => {
  const files = Array.from({ length: 100_000 }, (_, i) => file(i));
  const { asked, view } = await open(files);
  const pages = () => asked.filter((m) => m.op === "files").length;
  assert.equal(pages(), 1);
  assert.equal(view.store.rows.length, 200);
  const drawn = view.root.querySelectorAll(".kc-browser-rows .kc-browser-row").length;
  assert.ok(drawn > 0 && drawn <= 360 / ROW_HEIGHT + 2 * 6 + 1, `${drawn} rows drawn`);
  view.list.scrollTop = 190 * ROW_HEIGHT;
  view.redrawFiles();
  for (let i = 0; i < 5; i++) await settle();
  assert.equal(pages(), 2);
  assert.equal(asked.filter((m) => m.op === "files")[1].after, files[199].sha1);
  assert.equal(view.store.rows.length, 400);
  assert.ok(view.root.querySelectorAll(".kc-browser-rows .kc-browser-row").length <= 360 / ROW_HEIGHT + 13);
});

test("search asks the kernel with the query; arrows select and Enter previews", async () => {
  const files = [file(1, "alpha.txt"), file(2, "beta.json"), file(3, "alphabet.npy")];
  const { asked, view } = await open(files, { preview: () => ({ kind: "text", text: "hello", truncated: false, size: 5 }) });
  const search = view.root.querySelector(".kc-browser-search");
  search.value = "ALPHA";
  search.dispatchEvent(new window.KeyboardEvent("keydown", { key: "Enter" }));
  for (let i = 0; i < 5; i++) await settle();
  assert.equal(asked.filter((m) => m.op === "files").at(-1).q, "ALPHA");
  assert.equal(view.store.rows.length, 2);
  const key = (k) => view.list.dispatchEvent(new window.KeyboardEvent("keydown", { key: k, bubbles: true }));
  key("ArrowDown");
  key("ArrowDown");
  key("ArrowUp");
  key("ArrowDown");
  assert.equal(view.root.querySelector(".kc-selected .kc-col-label").textContent, "alphabet.npy");
  key("Enter");
  for (let i = 0; i < 5; i++) await settle();
  assert.equal(asked.at(-1).op, "preview");
  assert.equal(asked.at(-1).sha1, files[2].sha1);
  assert.equal(view.root.querySelector(".kc-browser-preview pre").textContent, "hello");
});

test("labels are shown as text, and an invalid variable name is refused before asking the kernel", async () => {
  const evil = file(7, "<img src=x onerror=alert(1)>.txt");
  const { asked, view } = await open([evil], { preview: () => ({ kind: "text", text: "<b>x</b>", truncated: false, size: 8 }) });
  assert.equal(view.root.querySelectorAll("img").length, 0);
  assert.equal(view.root.querySelector(".kc-browser-rows .kc-col-label").textContent, evil.label);
  view.root.querySelector(".kc-browser-rows .kc-browser-row").click();
  for (let i = 0; i < 5; i++) await settle();
  assert.equal(view.root.querySelectorAll("b").length, 0);
  const name = view.root.querySelector(".kc-browser-varname");
  name.value = "not valid";
  view.root.querySelector('[data-action="load"]').click();
  await settle();
  assert.ok(!asked.some((m) => m.op === "load"));
  assert.match(view.root.querySelector(".kc-browser-message").textContent, /not a valid Python variable name/);
  name.value = "ok_name";
  view.root.querySelector('[data-action="load"]').click();
  for (let i = 0; i < 5; i++) await settle();
  assert.equal(asked.filter((m) => m.op === "load")[0].name, "ok_name");
});

test("an admin changes a member's role from the members tab", async () => {
  let members = [{ email: "ada@example.org", role: "admin" }, { email: "bob@example.org", role: "read" }];
  const { asked, view } = await open([], {
    members: () => ({ members }),
    set_member: (m) => {
      members = members.map((x) => (x.email === m.email ? { ...x, role: m.role } : x));
      return { members };
    },
  });
  view.root.querySelector('[data-tab="members"]').click();
  for (let i = 0; i < 5; i++) await settle();
  const select = view.root.querySelector('tr[data-email="bob@example.org"] select');
  select.value = "write";
  select.dispatchEvent(new window.Event("change"));
  for (let i = 0; i < 5; i++) await settle();
  assert.deepEqual(asked.at(-1), { type: "request", id: asked.at(-1).id, op: "set_member", project_id: "p1", email: "bob@example.org", role: "write" });
  assert.equal(view.root.querySelector('tr[data-email="bob@example.org"] select').value, "write");
});
