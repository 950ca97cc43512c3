// Project browser of kachery-jupyter (anywidget front end).
//
// Everything shown comes from the kernel, which asks the hub with the signed client:
// this module sends {type: "request", id, op, ...} and the kernel answers
// {type: "response", id, ok, result | error}. Search and paging of files are done by
// the hub, a page at a time (keyset paging on sha1); the list is a fixed-height scroll
// box whose spacer is as tall as the rows loaded, and only the rows in view are in the
// DOM. The next page is asked for when the view nears the end of what is loaded.
// Every value from the hub is set with textContent, never as HTML.
//
// Keyboard: in the file list, ArrowUp/ArrowDown (PageUp/PageDown, Home/End) move the
// selection and Enter previews the selected file; in the mutables tree, Enter opens a key.

import { OVERSCAN, h, visibleWindow } from "./common.js";

export { OVERSCAN, visibleWindow };

export const ROW_HEIGHT = 26; // px; keep in step with .kc-browser-row in browser.css
const SEARCH_DELAY_MS = 200;
const JSON_OPEN_DEPTH = 1; // levels of a JSON preview open at first
const JSON_MAX_ITEMS = 200; // items of an object or array shown in a JSON preview

// ------------------------------------------------------------------ pure logic

/** Bytes as "1.5 MB" (decimal units), "" when not a number. */
export function formatSize(n) {
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0) return "";
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB", "PB"];
  let v = n;
  let i = -1;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** Epoch seconds as local "YYYY-MM-DD HH:MM"; "" when not a number. */
export function formatDate(time) {
  if (typeof time !== "number" || !Number.isFinite(time)) return "";
  const d = new Date(time * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** The rows [first, last) to draw for a scroll position: those in view plus `overscan` each side. */

/** Whether a variable name is valid in Python (ASCII identifiers; the kernel checks it again). */
const KEYWORDS = new Set(("False None True and as assert async await break class continue def del elif else " +
  "except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield").split(" "));
export function validName(name) {
  return typeof name === "string" && /^[A-Za-z_][A-Za-z0-9_]*$/.test(name) && !KEYWORDS.has(name);
}

/** A variable name suggested by a label: "spikes run 2.npy" → "spikes_run_2". */
export function suggestName(label) {
  let base = String(label || "").replace(/\.[A-Za-z0-9]+$/, "").replace(/[^A-Za-z0-9_]+/g, "_").replace(/^_+|_+$/g, "");
  if (!base) base = "data";
  if (/^[0-9]/.test(base)) base = `x_${base}`;
  return validName(base) ? base : `${base}_`;
}

/** Mutable keys as a tree by "/": {name, key (leaves), children: [...]}, children sorted by name. */
export function buildTree(keys) {
  const root = { name: "", key: null, children: new Map() };
  for (const key of keys) {
    const parts = key.split("/");
    let node = root;
    parts.forEach((part, i) => {
      if (!node.children.has(part)) node.children.set(part, { name: part, key: null, children: new Map() });
      node = node.children.get(part);
      if (i === parts.length - 1) node.key = key;
    });
  }
  const finish = (node) => ({
    name: node.name,
    key: node.key,
    children: [...node.children.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map(finish),
  });
  return finish(root);
}

/** The files of one search, page after page as the hub gives them. A new search is a new store. */
export class FileStore {
  constructor(query = "") {
    this.query = query;
    this.rows = [];
    this.next = null; // the sha1 to continue after, null when the last page arrived
    this.started = false; // the first page was asked for
    this.done = false; // the last page arrived
    this.loading = false;
  }

  /** Adds a page {files, next}; a page that does not continue this store (a stale answer) is ignored. */
  ingest(page, after) {
    if (after !== (this.rows.length ? this.next : null)) return false;
    this.rows.push(...page.files);
    this.next = page.next;
    this.done = page.next === null;
    this.loading = false;
    return true;
  }

  /** Whether the next page should be asked for, with `last` the last row index in view. */
  wantsMore(last, margin = 100) {
    return !this.done && !this.loading && (!this.started || last + margin >= this.rows.length);
  }
}

/** Requests to the kernel and their answers (a promise each), per view. */
export class Requests {
  constructor(model) {
    this.model = model;
    this.pending = new Map();
    this.tag = Math.random().toString(36).slice(2, 10); // responses reach every view: ids are per view
    this.count = 0;
    this.onMessage = (msg) => {
      if (!msg || msg.type !== "response" || !this.pending.has(msg.id)) return;
      const { resolve, reject } = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (msg.ok) resolve(msg.result);
      else reject(new Error(msg.error || "the kernel refused"));
    };
    model.on("msg:custom", this.onMessage);
  }

  ask(op, args = {}) {
    const id = `${this.tag}:${++this.count}`;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.model.send({ type: "request", id, op, ...args });
    });
  }

  dispose() {
    this.model.off("msg:custom", this.onMessage);
    this.pending.clear();
  }
}

// ------------------------------------------------------------------ DOM helpers


function button(label, action, onClick, extra = {}) {
  return h("button", { className: "kc-button", type: "button", dataset: { action }, text: label, onclick: onClick, ...extra });
}

/** A JSON value as nested <details> (objects and arrays collapsible), every value as text. */
export function jsonNode(value, key = null, depth = 0) {
  const label = key === null ? "" : `${key}: `;
  if (value !== null && typeof value === "object") {
    const isArray = Array.isArray(value);
    const entries = isArray ? value.map((v, i) => [i, v]) : Object.entries(value);
    const details = h("details", { className: "kc-json" });
    if (depth < JSON_OPEN_DEPTH) details.open = true;
    const summary = isArray ? `[${entries.length}]` : `{${entries.length}}`;
    details.append(h("summary", { text: `${label}${summary}` }));
    const body = h("div", { className: "kc-json-body" });
    for (const [k, v] of entries.slice(0, JSON_MAX_ITEMS)) body.append(jsonNode(v, k, depth + 1));
    if (entries.length > JSON_MAX_ITEMS) body.append(h("div", { className: "kc-muted", text: `\u2026 ${entries.length - JSON_MAX_ITEMS} more` }));
    details.append(body);
    return details;
  }
  return h("div", { className: "kc-json-leaf", text: `${label}${JSON.stringify(value)}` });
}

async function copyText(text, fallbackHost) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (an insecure page, a denied permission): select it in a field and copy.
    const field = h("textarea", { className: "kc-offscreen", "aria-hidden": "true" });
    field.value = text;
    fallbackHost.append(field);
    field.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch {
      ok = false;
    }
    field.remove();
    return ok;
  }
}

// ------------------------------------------------------------------ the view

export function createBrowser(model, el) {
  const requests = new Requests(model);
  let projects = [];
  let projectId = model.get("project_id") || "";
  let tab = "files";
  let store = new FileStore("");
  let selected = -1;
  let searchTimer = null;
  let disposed = false;
  let ready = false; // the projects are known: files may be asked for

  const status = h("span", { className: "kc-browser-status", role: "status" });
  const projectSelect = h("select", { className: "kc-browser-project", "aria-label": "project" });
  const tabs = {};
  const tabBar = h("div", { className: "kc-browser-tabs", role: "tablist" });
  for (const [name, title] of [["files", "Files"], ["mutables", "Mutables"], ["feeds", "Feeds"], ["tasks", "Tasks"], ["members", "Members"]]) {
    tabs[name] = h("button", { className: "kc-button kc-browser-tab", type: "button", role: "tab", dataset: { tab: name }, text: title, onclick: () => show(name) });
    tabBar.append(tabs[name]);
  }

  // files
  const search = h("input", { className: "kc-browser-search", type: "search", placeholder: "Search labels", "aria-label": "search labels" });
  const count = h("span", { className: "kc-browser-count kc-muted" });
  const spacer = h("div", { className: "kc-browser-spacer" });
  const rowsBox = h("div", { className: "kc-browser-rows" });
  const empty = h("div", { className: "kc-browser-empty kc-muted" });
  const list = h("div", { className: "kc-browser-list", tabindex: "0", role: "listbox", "aria-label": "files" }, [spacer, rowsBox, empty]);
  const head = h("div", { className: "kc-browser-row kc-browser-header", "aria-hidden": "true" }, [
    h("span", { className: "kc-col-label", text: "Label" }), h("span", { className: "kc-col-size", text: "Size" }),
    h("span", { className: "kc-col-date", text: "Stored" }), h("span", { className: "kc-col-user", text: "By" }),
  ]);
  const detail = h("div", { className: "kc-browser-detail" });
  const filesPane = h("div", { className: "kc-browser-pane", dataset: { pane: "files" } }, [
    h("div", { className: "kc-browser-toolbar" }, [search, count]), head, list, detail,
  ]);
  const mutablesPane = h("div", { className: "kc-browser-pane", dataset: { pane: "mutables" } });
  const feedsPane = h("div", { className: "kc-browser-pane", dataset: { pane: "feeds" } });
  const tasksPane = h("div", { className: "kc-browser-pane", dataset: { pane: "tasks" } });
  const membersPane = h("div", { className: "kc-browser-pane", dataset: { pane: "members" } });
  const panes = { files: filesPane, mutables: mutablesPane, feeds: feedsPane, tasks: tasksPane, members: membersPane };
  const opened = h("div", { className: "kc-browser-opened" });

  const root = h("div", { className: "kc-theme kc-browser" }, [
    h("div", { className: "kc-browser-head" }, [
      h("span", { className: "kc-browser-title", text: "kachery" }), projectSelect,
      h("span", { className: "kc-muted kc-browser-who", text: [model.get("user"), model.get("hub_url")].filter(Boolean).join(" \u00b7 ") }),
      status,
    ]),
    tabBar, ...Object.values(panes), opened,
  ]);
  el.append(root);

  function setStatus(text, isError = false) {
    status.textContent = text;
    status.classList.toggle("kc-error", isError);
  }

  const fail = (e) => setStatus(e.message, true);

  function project() {
    return projects.find((p) => p.project_id === projectId) || null;
  }

  // -- projects

  async function loadProjects() {
    projects = await requests.ask("projects");
    projectSelect.replaceChildren();
    const shown = projects.some((p) => p.project_id === projectId) ? projects : [...projects, { project_id: projectId, name: projectId, role: "", public_read: true }];
    for (const p of shown) {
      const role = p.role || "not a member";
      const option = h("option", { value: p.project_id, text: `${p.name} (${role}${p.public_read ? ", public" : ""})` });
      projectSelect.append(option);
    }
    projectSelect.value = projectId;
  }

  projectSelect.addEventListener("change", () => {
    projectId = projectSelect.value;
    resetFiles(search.value);
    show(tab === "members" && (project() || {}).role !== "admin" ? "files" : tab);
  });

  // -- files

  function resetFiles(query) {
    store = new FileStore(query.trim());
    selected = -1;
    list.scrollTop = 0;
    detail.replaceChildren();
    redrawFiles();
    more();
  }

  async function more() {
    const s = store;
    if (s.loading || s.done) return;
    s.loading = true;
    s.started = true;
    const after = s.rows.length ? s.next : null;
    const t0 = performance.now();
    try {
      const page = await requests.ask("files", { project_id: projectId, q: s.query, after });
      if (s !== store) return; // a newer search replaced it
      s.ingest(page, after);
      setStatus(`page in ${Math.round(performance.now() - t0)} ms`);
    } catch (e) {
      s.loading = false;
      s.done = true;
      fail(e);
    }
    redrawFiles();
  }

  const rowNodes = new Map();

  function rowNode(i, file) {
    const node = h("div", { className: "kc-browser-row", role: "option", dataset: { index: String(i) } }, [
      h("span", { className: "kc-col-label", text: file.label || file.sha1, title: file.uri }),
      h("span", { className: "kc-col-size", text: formatSize(file.size) }),
      h("span", { className: "kc-col-date", text: formatDate(file.created_at) }),
      h("span", { className: "kc-col-user", text: file.created_by || "" }),
    ]);
    node.addEventListener("click", () => select(i, true));
    return node;
  }

  function redrawFiles() {
    const n = store.rows.length;
    spacer.style.height = `${n * ROW_HEIGHT}px`;
    const { first, last } = visibleWindow(list.scrollTop, list.clientHeight || 360, ROW_HEIGHT, n);
    for (const [i, node] of rowNodes) {
      if (i < first || i >= last) {
        node.remove();
        rowNodes.delete(i);
      }
    }
    for (let i = first; i < last; i++) {
      let node = rowNodes.get(i);
      if (!node) {
        node = rowNode(i, store.rows[i]);
        node.style.top = `${i * ROW_HEIGHT}px`;
        rowNodes.set(i, node);
        rowsBox.append(node);
      }
      node.classList.toggle("kc-selected", i === selected);
      node.setAttribute("aria-selected", i === selected ? "true" : "false");
    }
    // The header's columns over the rows': the list's border and scroll bar taken into account.
    head.style.paddingRight = `${6 + Math.max(0, list.offsetWidth - list.clientWidth - 1)}px`;
    const noun = store.query ? "match" + (n === 1 ? "" : "es") : "file" + (n === 1 ? "" : "s");
    count.textContent = `${n.toLocaleString("en-US")}${store.done ? "" : "+"} ${noun}${store.loading ? " \u00b7 loading\u2026" : ""}`;
    empty.textContent = store.done && !n ? (store.query ? "No label holds this text." : "No files in this project.") : "";
    empty.hidden = !empty.textContent;
    if (ready && store.wantsMore(last)) more();
  }

  list.addEventListener("scroll", () => redrawFiles());

  function select(i, doPreview = false) {
    const n = store.rows.length;
    if (!n) return;
    selected = Math.max(0, Math.min(n - 1, i));
    const top = selected * ROW_HEIGHT;
    if (top < list.scrollTop) list.scrollTop = top;
    else if (top + ROW_HEIGHT > list.scrollTop + list.clientHeight) list.scrollTop = top + ROW_HEIGHT - list.clientHeight;
    redrawFiles();
    if (doPreview) showFile(store.rows[selected]);
  }

  list.addEventListener("keydown", (event) => {
    const page = Math.max(1, Math.floor((list.clientHeight || 360) / ROW_HEIGHT) - 1);
    const moves = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page };
    if (event.key in moves) select(selected < 0 ? 0 : selected + moves[event.key]);
    else if (event.key === "Home") select(0);
    else if (event.key === "End") select(store.rows.length - 1);
    else if (event.key === "Enter" && selected >= 0) showFile(store.rows[selected]);
    else return;
    event.preventDefault();
  });

  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => resetFiles(search.value), SEARCH_DELAY_MS);
  });
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      clearTimeout(searchTimer);
      resetFiles(search.value);
    } else if (event.key === "ArrowDown") {
      list.focus();
      select(0);
      event.preventDefault();
    }
  });

  function showFile(file) {
    const message = h("span", { className: "kc-browser-message", role: "status" });
    const name = h("input", { className: "kc-browser-varname", type: "text", "aria-label": "variable name", value: suggestName(file.label) });
    const body = h("div", { className: "kc-browser-preview" }, [h("span", { className: "kc-muted", text: "Loading preview\u2026" })]);
    const load = async () => {
      if (!validName(name.value)) {
        message.textContent = `${JSON.stringify(name.value)} is not a valid Python variable name`;
        message.className = "kc-browser-message kc-error";
        return;
      }
      message.textContent = "Loading\u2026";
      message.className = "kc-browser-message";
      try {
        const r = await requests.ask("load", { sha1: file.sha1, label: file.label, size: file.size, name: name.value });
        message.textContent = `${r.name} = ${r.type}`;
      } catch (e) {
        message.textContent = e.message;
        message.className = "kc-browser-message kc-error";
      }
    };
    name.addEventListener("keydown", (event) => {
      if (event.key === "Enter") load();
    });
    detail.replaceChildren(
      h("div", { className: "kc-browser-detail-head" }, [
        h("span", { className: "kc-browser-detail-title", text: file.label || file.sha1 }),
        h("span", { className: "kc-muted", text: `${formatSize(file.size)} \u00b7 ${formatDate(file.created_at)}${file.created_by ? ` \u00b7 ${file.created_by}` : ""}` }),
      ]),
      h("code", { className: "kc-browser-uri", text: file.uri }),
      h("div", { className: "kc-browser-actions" }, [
        button("Copy URI", "copy", async () => {
          const ok = await copyText(file.uri, root);
          message.textContent = ok ? "URI copied" : "Copy failed: select the URI above";
          message.className = `kc-browser-message${ok ? "" : " kc-error"}`;
        }),
        h("label", { className: "kc-browser-varlabel" }, [h("span", { text: "Variable" }), name]),
        button("Load into variable", "load", load),
        message,
      ]),
      body,
    );
    requests.ask("preview", { sha1: file.sha1, label: file.label, size: file.size }).then(
      (p) => body.replaceChildren(...previewNodes(p)),
      (e) => body.replaceChildren(h("span", { className: "kc-error", text: e.message })),
    );
  }

  // -- mutables

  async function showMutables() {
    const value = h("div", { className: "kc-browser-mutable-value" });
    mutablesPane.replaceChildren(h("span", { className: "kc-muted", text: "Loading\u2026" }));
    const { mutables, more: truncated } = await requests.ask("mutables", { project_id: projectId });
    const tree = buildTree(mutables.map((m) => m.key));
    const open = async (key) => {
      value.replaceChildren(h("span", { className: "kc-muted", text: "Loading\u2026" }));
      const r = await requests.ask("mutable", { project_id: projectId, key });
      value.replaceChildren(h("div", { className: "kc-browser-detail-title", text: key }), h("pre", { text: r.value + (r.truncated ? "\n\u2026" : "") }));
    };
    const nodeFor = (node) => {
      if (!node.children.length) {
        return h("div", { className: "kc-tree-leaf", tabindex: "0", role: "treeitem", dataset: { key: node.key }, text: node.name,
          onclick: () => open(node.key).catch(fail), onkeydown: (e) => { if (e.key === "Enter") open(node.key).catch(fail); } });
      }
      const details = h("details", { className: "kc-tree" }, [h("summary", { text: `${node.name}/` })]);
      if (node.key !== null) details.append(h("div", { className: "kc-tree-leaf", tabindex: "0", role: "treeitem", dataset: { key: node.key }, text: "(value)", onclick: () => open(node.key).catch(fail) }));
      for (const child of node.children) details.append(nodeFor(child));
      return details;
    };
    const treeBox = h("div", { className: "kc-browser-tree", role: "tree" }, tree.children.map(nodeFor));
    mutablesPane.replaceChildren(
      mutables.length ? treeBox : h("span", { className: "kc-muted", text: "No mutables in this project." }),
      truncated ? h("div", { className: "kc-muted", text: "Only the first 1,000 keys are shown." }) : null,
      value,
    );
  }

  // -- feeds and tasks

  async function showFeeds() {
    feedsPane.replaceChildren(h("span", { className: "kc-muted", text: "Loading\u2026" }));
    const { feeds } = await requests.ask("feeds", { project_id: projectId });
    if (!feeds.length) return feedsPane.replaceChildren(h("span", { className: "kc-muted", text: "No feeds in this project." }));
    feedsPane.replaceChildren(...feeds.map((f) => h("div", { className: "kc-browser-item" }, [
      h("span", { className: "kc-browser-item-name", text: f.label || f.feed_id }),
      h("span", { className: "kc-muted", text: `${(f.message_count || 0).toLocaleString("en-US")} messages` }),
      h("code", { text: f.uri }),
      button("Open live viewer", "open-feed", () => requests.ask("open_feed", { uri: f.uri }).catch(fail)),
    ])));
  }

  async function showTasks() {
    tasksPane.replaceChildren(h("span", { className: "kc-muted", text: "Loading\u2026" }));
    const r = await requests.ask("tasks", { project_id: projectId });
    const text = r.backends || r.has_jobs ? `${r.backends} task backend${r.backends === 1 ? "" : "s"} online` : "No tasks in this project yet.";
    tasksPane.replaceChildren(h("span", { text }), button("Open task panel", "open-tasks", () => requests.ask("open_tasks", { project_id: projectId }).catch(fail)));
  }

  // -- members (admins)

  async function showMembers(answer = null) {
    const r = answer || (await requests.ask("members", { project_id: projectId }));
    const isAdmin = (project() || {}).role === "admin";
    const message = h("span", { className: "kc-browser-message", role: "status" });
    const act = (op, args) => requests.ask(op, { project_id: projectId, ...args }).then((a) => showMembers(a), (e) => {
      message.textContent = e.message;
      message.className = "kc-browser-message kc-error";
    });
    const roleSelect = (value, label) => {
      const s = h("select", { "aria-label": label });
      for (const role of ["read", "write", "admin"]) s.append(h("option", { value: role, text: role }));
      s.value = value;
      return s;
    };
    const rows = r.members.map((m) => {
      const s = roleSelect(m.role, `role of ${m.email}`);
      s.disabled = !isAdmin;
      s.addEventListener("change", () => act("set_member", { email: m.email, role: s.value }));
      return h("tr", { dataset: { email: m.email } }, [
        h("td", { text: m.email }), h("td", {}, [s]),
        h("td", {}, [isAdmin ? button("Remove", "remove-member", () => act("remove_member", { email: m.email })) : null]),
      ]);
    });
    const email = h("input", { type: "email", placeholder: "email", "aria-label": "new member's email" });
    const role = roleSelect("read", "new member's role");
    membersPane.replaceChildren(
      h("table", { className: "kc-browser-members" }, [h("tbody", {}, rows)]),
      isAdmin ? h("div", { className: "kc-browser-actions" }, [email, role, button("Add member", "add-member", () => act("set_member", { email: email.value, role: role.value }))]) : null,
      message,
    );
  }

  // -- tabs

  function show(name) {
    tab = name;
    const isAdmin = (project() || {}).role === "admin";
    tabs.members.hidden = !isAdmin;
    for (const [key, pane] of Object.entries(panes)) {
      pane.hidden = key !== name;
      tabs[key].setAttribute("aria-selected", key === name ? "true" : "false");
      tabs[key].classList.toggle("kc-primary", key === name);
    }
    const loaders = { mutables: showMutables, feeds: showFeeds, tasks: showTasks, members: () => showMembers() };
    if (loaders[name]) loaders[name]().catch(fail);
    else redrawFiles();
  }

  // -- the opened feed viewer or task panel (a child widget)

  let openedView = null;
  async function renderOpened() {
    if (openedView) {
      openedView.remove();
      openedView = null;
    }
    opened.replaceChildren();
    const ref = model.get("opened");
    if (!ref || typeof ref !== "string") return;
    const manager = model.widget_manager;
    const close = button("Close", "close-opened", () => requests.ask("close_opened").catch(fail));
    try {
      const child = await manager.get_model(ref.replace(/^IPY_MODEL_/, ""));
      openedView = await manager.create_view(child);
      opened.replaceChildren(h("div", { className: "kc-browser-opened-head" }, [close]), openedView.el);
    } catch (e) {
      opened.replaceChildren(close, h("span", { className: "kc-error", text: `Cannot show it here: ${e.message}` }));
    }
  }
  const onOpened = () => renderOpened();
  model.on("change:opened", onOpened);

  // -- start

  show("files");
  (async () => {
    try {
      await loadProjects();
      if (disposed) return;
      ready = true;
      resetFiles("");
      show(tab);
      renderOpened();
    } catch (e) {
      fail(e);
    }
  })();

  return {
    root,
    list,
    get store() {
      return store;
    },
    redrawFiles,
    dispose() {
      disposed = true;
      clearTimeout(searchTimer);
      requests.dispose();
      model.off("change:opened", onOpened);
      if (openedView) openedView.remove();
    },
  };
}

function previewNodes(p) {
  if (p.kind === "image") {
    return [h("img", { className: "kc-browser-image", src: p.src, alt: "image preview" })];
  }
  if (p.kind === "json") return [jsonNode(p.value)];
  if (p.kind === "npy") {
    return [
      h("div", { text: `array shape (${p.shape.join(", ")}${p.shape.length === 1 ? "," : ""}) dtype ${p.dtype}` }),
      p.text ? h("div", { className: "kc-muted", text: `showing ${p.slice}` }) : null,
      p.text ? h("pre", { text: p.text }) : null,
      p.note ? h("div", { className: "kc-muted", text: p.note }) : null,
    ];
  }
  if (p.kind === "text") {
    return [h("pre", { text: p.text }), p.truncated ? h("div", { className: "kc-muted", text: `\u2026 first ${formatSize(p.text.length)} of ${formatSize(p.size)}` }) : null];
  }
  return [h("div", { className: "kc-muted", text: p.note || "binary data" }), p.hex ? h("pre", { text: p.hex }) : null];
}

function render({ model, el }) {
  const browser = createBrowser(model, el);
  return () => browser.dispose();
}

export default { render };
