// Task panel of kachery-jupyter (anywidget front end).
//
// The kernel looks at the hub while a view is attached and sends a snapshot whenever
// something changed: {type: "snapshot", now, backends: [...], jobs: [...]}. It is kept in
// one store per model (shared by every view), never in a trait. This module asks for it
// with {type: "ready"} when it starts; "Refresh" sends {type: "refresh"}.
//
// The backends online (a handful) are listed in full. Jobs are a fixed-height scroll box
// whose spacer is as tall as all rows, and only the rows in view are in the DOM; the
// chosen job's details (times, backend, the error's traceback) show in a pane below the
// list, so every row keeps one height. Every value from the hub is set with textContent,
// never as HTML. Durations of running jobs and heartbeat ages tick once a second, on the
// kernel's clock (the snapshot's `now`), not the browser's.

import { OVERSCAN, h, visibleWindow } from "./common.js";

export { OVERSCAN, visibleWindow };

export const ROW_HEIGHT = 26; // px; keep in step with .kc-task-row in taskpanel.css
export const LIST_ROWS = 12; // rows the job list shows before it scrolls
const TICK_MS = 1000;
const STATUS_ORDER = ["started", "pending", "error", "cancelled", "finished"];

// ------------------------------------------------------------------ pure logic

/** The rows [first, last) to draw for a scroll position: those in view plus `overscan` each side. */

/** Seconds as "0.42 s", "12 s", "3 min 05 s", "2 h 03 min"; "" when not a number. */
export function formatDuration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 60) return `${Math.floor(s)} s`;
  const p = (n) => String(n).padStart(2, "0");
  if (s < 3600) return `${Math.floor(s / 60)} min ${p(Math.floor(s % 60))} s`;
  return `${Math.floor(s / 3600)} h ${p(Math.floor((s % 3600) / 60))} min`;
}

/** How long ago `time` was at `now` (both epoch seconds): "now", "4 s ago", "3 min ago". */
export function ago(time, now) {
  if (typeof time !== "number" || typeof now !== "number") return "never";
  const s = Math.max(0, now - time);
  if (s < 1) return "now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

/** A job's running time: started → finished, or started → `now` while it runs; null before it starts. */
export function jobDuration(job, now) {
  if (typeof job.started_at !== "number") return null;
  const end = typeof job.finished_at === "number" ? job.finished_at : now;
  return Math.max(0, end - job.started_at);
}

/** `time` (epoch seconds) as local "YYYY-MM-DD HH:MM:SS"; "" when it is not a number. */
export function formatTime(time) {
  if (typeof time !== "number" || !Number.isFinite(time)) return "";
  const d = new Date(time * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** When a job was requested: "HH:MM:SS" on the day of `now`, else "MM-DD HH:MM" (the title has it all). */
export function formatWhen(time, now) {
  const full = formatTime(time);
  if (!full) return "";
  return full.slice(0, 10) === formatTime(now).slice(0, 10) ? full.slice(11) : full.slice(5, 16);
}

/** Whether a job matches `query` (lower-cased): its name, status, type, requester, ID or error. */
export function matchesJob(job, query) {
  if (!query) return true;
  const fields = [job.task_name, job.status, job.task_type, job.requested_by, job.job_id, job.backend_id];
  if (job.error) fields.push(job.error.type, job.error.message);
  return fields.some((f) => typeof f === "string" && f.toLowerCase().includes(query));
}

/** Newest request first; ties by job ID, so the order is stable between snapshots. */
export function sortJobs(jobs) {
  return [...jobs].sort((a, b) => (b.requested_at ?? 0) - (a.requested_at ?? 0) || (a.job_id < b.job_id ? -1 : a.job_id > b.job_id ? 1 : 0));
}

/** "2 started · 1 error · 5 finished": the jobs counted by status, in a fixed order. */
export function statusCounts(jobs) {
  const counts = new Map();
  for (const job of jobs) counts.set(job.status, (counts.get(job.status) || 0) + 1);
  const known = STATUS_ORDER.filter((s) => counts.has(s));
  const other = [...counts.keys()].filter((s) => !STATUS_ORDER.includes(s)).sort();
  return [...known, ...other].map((s) => `${counts.get(s)} ${s}`).join(" \u00b7 ");
}

/** What the status cell of a job says: "started 40%", "error", "cancel requested"... */
export function statusText(job) {
  if (job.status === "started" && job.cancel_requested) return "cancelling";
  if (job.status === "started" && typeof job.fraction === "number") return `started ${Math.round(Math.max(0, Math.min(1, job.fraction)) * 100)}%`;
  if (job.status === "pending") return "waiting";
  return job.status || "";
}

/** The note of a row: the error in one line, or the progress message, or the attempt. */
export function noteText(job) {
  if (job.error) {
    const first = (job.error.message || "").split("\n")[0];
    return first ? `${job.error.type || "Error"}: ${first}` : job.error.type || "Error";
  }
  if (job.message) return job.message.split("\n")[0];
  if (job.attempts > 1) return `attempt ${job.attempts}`;
  return "";
}

/** The jobs of a snapshot as the list shows them: sorted, then filtered by `query`. */
export class JobView {
  constructor() {
    this.all = [];
    this.query = "";
    this.rows = [];
  }

  setJobs(jobs) {
    this.all = sortJobs(jobs);
    this.apply();
  }

  setFilter(text) {
    const query = text.trim().toLowerCase();
    if (query === this.query) return false;
    this.query = query;
    this.apply();
    return true;
  }

  apply() {
    this.rows = this.query ? this.all.filter((j) => matchesJob(j, this.query)) : this.all;
  }

  get count() {
    return this.rows.length;
  }

  positionOf(jobId) {
    return this.rows.findIndex((j) => j.job_id === jobId);
  }
}

// ------------------------------------------------------------------ one store per model

const stores = new WeakMap();

function connect(model) {
  let s = stores.get(model);
  if (s) return s;
  s = { snapshot: null, views: new Set() };
  stores.set(model, s);
  model.on("msg:custom", (msg) => {
    if (!msg || typeof msg !== "object" || msg.type !== "snapshot") return;
    s.snapshot = { now: msg.now, backends: msg.backends || [], jobs: msg.jobs || [] };
    for (const v of s.views) v.changed();
  });
  model.send({ type: "ready" });
  return s;
}

// ------------------------------------------------------------------ drawing


function button(label, action, onClick, title = "") {
  return h("button", { className: "kc-button", type: "button", dataset: { action }, text: label, onclick: onClick, ...(title ? { title } : {}) });
}

/** Draws one view of the model into `el`; returns the view (tests call `redraw` directly). */
export function createPanel(model, el, { schedule, clock, tick = true } = {}) {
  const shared = connect(model);
  const view = new JobView();
  const later = schedule || globalThis.requestAnimationFrame?.bind(globalThis) || ((f) => setTimeout(f, 16));
  const localNow = clock || (() => Date.now() / 1000);
  let offset = 0; // the kernel's clock minus this one: durations and ages count on the kernel's clock
  const now = () => localNow() + offset;
  let selected = null; // job ID shown in the detail pane
  let pending = false;
  let seen = null; // the snapshot the view last took its jobs from

  const title = h("span", { className: "kc-task-title" });
  const status = h("span", { className: "kc-task-status" });
  const refresh = button("Refresh", "refresh", () => model.send({ type: "refresh" }), "ask the hub now");

  const backendsHead = h("div", { className: "kc-task-section" });
  const backends = h("div", { className: "kc-task-backends", role: "list", "aria-label": "task handlers online" });

  const filter = h("input", { className: "kc-task-filter", type: "search", placeholder: "filter jobs", "aria-label": "filter jobs" });
  filter.addEventListener("input", () => {
    if (view.setFilter(filter.value)) {
      list.scrollTop = 0;
      request();
    }
  });
  const count = h("span", { className: "kc-task-count", "aria-live": "polite" });

  const header = h("div", { className: "kc-task-row kc-task-header", "aria-hidden": "true" }, [
    h("span", { className: "kc-task-toggle" }),
    h("span", { className: "kc-task-state", text: "status" }),
    h("span", { className: "kc-task-name", text: "task" }),
    h("span", { className: "kc-task-duration", text: "duration" }),
    h("span", { className: "kc-task-by", text: "requested by" }),
    h("span", { className: "kc-task-when", text: "requested" }),
    h("span", { className: "kc-task-note", text: "" }),
  ]);
  const spacer = h("div", { className: "kc-task-spacer" });
  const layer = h("div", { className: "kc-task-rows" });
  const empty = h("div", { className: "kc-task-empty" });
  const list = h("div", { className: "kc-task-list", tabindex: "0", role: "list", "aria-label": "recent jobs" }, [spacer, layer, empty]);
  list.addEventListener("scroll", () => request());
  list.addEventListener("click", (e) => {
    const row = e.target.closest?.(".kc-task-job");
    if (row) toggle(row.dataset.job);
  });
  list.addEventListener("keydown", (e) => {
    const row = e.target.closest?.(".kc-task-job");
    if (row && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      toggle(row.dataset.job);
    }
  });

  const detailHead = h("span", { className: "kc-task-detail-head" });
  const detailFacts = h("dl", { className: "kc-task-facts" });
  const detailError = h("p", { className: "kc-task-error" });
  const detailTrace = h("pre", { className: "kc-task-traceback" });
  const detail = h("div", { className: "kc-task-detail" }, [
    h("div", { className: "kc-task-detail-bar" }, [detailHead, button("Collapse", "collapse", () => toggle(selected))]),
    detailFacts,
    detailError,
    detailTrace,
  ]);

  const root = h("div", { className: "kc-theme kc-tasks" }, [
    h("div", { className: "kc-task-head" }, [title, status, refresh]),
    backendsHead,
    backends,
    h("div", { className: "kc-task-toolbar" }, [h("span", { className: "kc-task-section", text: "Recent jobs" }), filter, count]),
    header,
    list,
    detail,
  ]);
  el.replaceChildren(root);

  function toggle(jobId) {
    selected = selected === jobId || !jobId ? null : jobId;
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

  function changed() {
    request();
  }

  function drawBackend(b, t) {
    const handlers = b.handlers.map(([type, name]) => h("span", { className: `kc-task-handler kc-type-${type === "action" ? "action" : "calculation"}`, text: name, title: `${type} ${name}` }));
    return h("div", { className: "kc-task-backend", role: "listitem", dataset: { backend: b.backend_id } }, [
      h("span", { className: "kc-task-backend-id", text: b.backend_id, title: b.label || b.backend_id }),
      h("span", { className: "kc-task-backend-label", text: [b.label, b.user].filter(Boolean).join(" \u00b7 ") + (b.this_kernel ? " (this kernel)" : "") }),
      h("span", { className: "kc-task-heartbeat", text: `heartbeat ${ago(b.last_heartbeat, t)}`, title: formatTime(b.last_heartbeat) }),
      h("span", { className: "kc-task-handlers" }, handlers.length ? handlers : [h("span", { className: "kc-task-muted", text: "no handlers" })]),
    ]);
  }

  function drawJob(job, position, t) {
    const open = job.job_id === selected;
    const state = job.status || "none";
    return h("div", {
      className: `kc-task-row kc-task-job kc-job-${state}${open ? " kc-selected" : ""}`,
      role: "listitem",
      tabindex: "-1",
      "aria-expanded": open ? "true" : "false",
      dataset: { job: job.job_id, status: state },
      style: `top:${position * ROW_HEIGHT}px`,
    }, [
      h("span", { className: "kc-task-toggle", text: open ? "\u25BE" : "\u25B8", "aria-hidden": "true" }),
      h("span", { className: "kc-task-state", text: statusText(job) }),
      h("span", { className: "kc-task-name", text: job.task_name, title: `${job.task_type} ${job.task_name}` }),
      h("span", { className: "kc-task-duration", text: formatDuration(jobDuration(job, t)) }),
      h("span", { className: "kc-task-by", text: job.requested_by || "\u2014", title: job.requested_by || "requester not shown" }),
      h("span", { className: "kc-task-when", text: formatWhen(job.requested_at, t), title: formatTime(job.requested_at) }),
      h("span", { className: "kc-task-note", text: noteText(job) }),
    ]);
  }

  function fact(name, value) {
    return value ? [h("dt", { text: name }), h("dd", { text: value })] : [];
  }

  function redraw() {
    const snap = shared.snapshot;
    if (snap && snap !== seen) {
      seen = snap;
      if (typeof snap.now === "number") offset = snap.now - localNow();
      view.setJobs(snap.jobs);
    }
    const t = now();
    const project = model.get("project_id");
    title.textContent = project ? `Tasks \u00b7 project ${project}` : "Tasks";
    const state = model.get("status") || "";
    status.textContent = state === "error" ? model.get("status_message") || "error" : state;
    status.className = `kc-task-status kc-status-${state || "none"}`;

    const online = snap ? snap.backends : [];
    const handlerCount = online.reduce((n, b) => n + b.handlers.length, 0);
    backendsHead.textContent = snap
      ? `Handlers online: ${handlerCount} on ${online.length} backend${online.length === 1 ? "" : "s"}`
      : "Loading\u2026";
    backends.replaceChildren(...(online.length ? online.map((b) => drawBackend(b, t)) : snap ? [h("div", { className: "kc-task-muted", text: "No backend is serving this project: requests wait in the queue." })] : []));

    const total = view.count;
    spacer.style.height = `${total * ROW_HEIGHT}px`;
    // As tall as its rows, up to LIST_ROWS of them; then it scrolls.
    list.style.height = `${Math.min(LIST_ROWS, Math.max(total, 2)) * ROW_HEIGHT + 2}px`;
    const height = list.clientHeight || LIST_ROWS * ROW_HEIGHT;
    const { first, last } = visibleWindow(list.scrollTop, height, ROW_HEIGHT, total);
    const rows = [];
    for (let p = first; p < last; p++) rows.push(drawJob(view.rows[p], p, t));
    layer.replaceChildren(...rows);

    const counts = statusCounts(view.all);
    count.textContent = view.query ? `${view.count} of ${view.all.length} match` : counts || "";
    empty.textContent = total ? "" : view.query ? "No job matches the filter." : snap ? "No jobs yet." : "";
    empty.hidden = total > 0;

    const job = selected === null ? null : view.all.find((j) => j.job_id === selected);
    detail.hidden = !job;
    if (job) {
      detailHead.textContent = `${job.task_type} ${job.task_name} \u00b7 ${statusText(job)}`;
      detailFacts.replaceChildren(
        ...fact("job", job.job_id),
        ...fact("requested", [formatTime(job.requested_at), job.requested_by].filter(Boolean).join(" by ")),
        ...fact("started", formatTime(job.started_at)),
        ...fact("ended", formatTime(job.finished_at)),
        ...fact("duration", formatDuration(jobDuration(job, t))),
        ...fact("backend", job.backend_id),
        ...fact("attempts", job.attempts ? String(job.attempts) : ""),
        ...fact("progress", [typeof job.fraction === "number" ? `${Math.round(job.fraction * 100)}%` : "", job.message].filter(Boolean).join(" ")),
      );
      detailError.hidden = !job.error;
      detailError.textContent = job.error ? `${job.error.type || "Error"}: ${job.error.message || ""}` : "";
      detailTrace.hidden = !(job.error && job.error.traceback);
      detailTrace.textContent = job.error?.traceback || "";
    }
  }

  const self = { redraw, changed, view, list, root };
  shared.views.add(self);
  const traits = ["status", "status_message", "project_id"];
  for (const name of traits) model.on(`change:${name}`, request);
  // Durations of running jobs and heartbeat ages move with time, not only with snapshots.
  const timer = tick ? setInterval(request, TICK_MS) : null;
  redraw();
  return {
    ...self,
    dispose() {
      shared.views.delete(self);
      if (timer !== null) clearInterval(timer);
      for (const name of traits) model.off(`change:${name}`, request);
    },
  };
}

function initialize({ model }) {
  connect(model); // ask for the snapshot as soon as the model exists
}

function render({ model, el }) {
  const panel = createPanel(model, el);
  return () => panel.dispose();
}

export default { initialize, render };
