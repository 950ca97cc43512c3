import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { FakeModel, click, installDom } from "./fake_model.mjs";

installDom();
const {
  default: widget,
  JobView,
  ROW_HEIGHT,
  ago,
  createPanel,
  formatDuration,
  formatWhen,
  LIST_ROWS,
  jobDuration,
  matchesJob,
  noteText,
  sortJobs,
  statusCounts,
  statusText,
  visibleWindow,
} = await import("../taskpanel.js");

const T0 = 1_700_000_000;

function job(n, extra = {}) {
  return {
    job_id: `job${String(n).padStart(5, "0")}`,
    task_type: "calculation",
    task_name: `mean_rate`,
    status: "finished",
    attempts: 1,
    requested_by: "ada@example.org",
    requested_at: T0 + n,
    started_at: T0 + n + 0.1,
    finished_at: T0 + n + 0.5,
    backend_id: "b1",
    fraction: null,
    message: "",
    error: null,
    cancel_requested: false,
    ...extra,
  };
}

function backend(id, handlers = [["calculation", "mean_rate"]], extra = {}) {
  return { backend_id: id, label: "notebook kernel lab1 pid 42", user: "ada@example.org", handlers, last_heartbeat: T0 + 100, num_workers: 4, this_kernel: false, ...extra };
}

function model(state = {}) {
  return new FakeModel({ project_id: "p1", status: "live", status_message: "", ...state });
}

function kernelSends(m, msg) {
  for (const fn of m.handlers.get("msg:custom") ?? []) fn(msg);
}

function snapshot(m, { now = T0 + 101, backends = [], jobs = [] } = {}) {
  kernelSends(m, { type: "snapshot", now, backends, jobs });
}

const sync = { schedule: (f) => f(), tick: false };

function shownJobs(el) {
  return [...el.querySelectorAll(".kc-task-job")].map((r) => r.dataset.job);
}

let el;
beforeEach(() => {
  el = document.createElement("div");
  document.body.replaceChildren(el);
});

// ------------------------------------------------------------------ pure logic

test("durations and ages read at a glance", () => {
  assert.equal(formatDuration(0.4234), "0.42 s");
  assert.equal(formatDuration(12.7), "12 s");
  assert.equal(formatDuration(185), "3 min 05 s");
  assert.equal(formatDuration(2 * 3600 + 3 * 60 + 9), "2 h 03 min");
  assert.equal(formatDuration(-1), "0.00 s", "clock skew never shows a negative time");
  assert.equal(formatDuration(null), "");
  assert.equal(ago(T0, T0 + 0.5), "now");
  assert.equal(ago(T0, T0 + 4.9), "4 s ago");
  assert.equal(ago(T0, T0 + 200), "3 min ago");
  assert.equal(ago(null, T0), "never");
});

test("when a job was requested: the time today, the date and minute on another day", () => {
  const noon = new Date(2024, 4, 6, 12, 0, 0).getTime() / 1000;
  assert.equal(formatWhen(noon - 3600 - 5, noon), "10:59:55");
  assert.equal(formatWhen(noon - 86400 - 60, noon), "05-05 11:59");
  assert.equal(formatWhen(null, noon), "");
});

test("a job's duration: started to finished, or to now while it runs, none before it starts", () => {
  assert.ok(Math.abs(jobDuration(job(0), T0 + 99) - 0.4) < 1e-6);
  assert.equal(jobDuration(job(0, { status: "started", finished_at: null }), T0 + 10.1), 10);
  assert.equal(jobDuration(job(0, { status: "pending", started_at: null, finished_at: null }), T0 + 10), null);
});

test("filter: name, status, type, requester, ID and error, case-insensitive", () => {
  const j = job(3, { status: "error", error: { type: "ZeroDivisionError", message: "division by zero", traceback: "..." } });
  for (const q of ["", "mean_rate", "error", "calculation", "ada@example", "job00003", "zerodivision", "division by"]) assert.equal(matchesJob(j, q), true, q);
  assert.equal(matchesJob(j, "bob"), false);
  assert.equal(matchesJob(job(1, { requested_by: "" }), "ada"), false, "no requester is no match, not an error");
});

test("jobs: newest request first, ties in a stable order; counts in a fixed status order", () => {
  const jobs = [job(1), job(3), job(2), job(3, { job_id: "aaa" })];
  assert.deepEqual(sortJobs(jobs).map((j) => j.job_id), ["aaa", "job00003", "job00002", "job00001"]);
  assert.deepEqual(jobs.map((j) => j.job_id), ["job00001", "job00003", "job00002", "aaa"], "the input is not reordered");
  const mixed = [job(1), job(2, { status: "error" }), job(3, { status: "started" }), job(4), job(5, { status: "paused?" })];
  assert.equal(statusCounts(mixed), "1 started \u00b7 1 error \u00b7 2 finished \u00b7 1 paused?");
  assert.equal(statusCounts([]), "");
});

test("status and note of a row", () => {
  assert.equal(statusText(job(0, { status: "started", fraction: 0.404 })), "started 40%");
  assert.equal(statusText(job(0, { status: "started", fraction: 7 })), "started 100%");
  assert.equal(statusText(job(0, { status: "started", cancel_requested: true })), "cancelling");
  assert.equal(statusText(job(0, { status: "pending" })), "waiting");
  assert.equal(noteText(job(0, { error: { type: "ValueError", message: "bad x\nmore lines", traceback: "" } })), "ValueError: bad x");
  assert.equal(noteText(job(0, { error: { type: "", message: "", traceback: "" } })), "Error");
  assert.equal(noteText(job(0, { message: "chunk 4 of 10" })), "chunk 4 of 10");
  assert.equal(noteText(job(0, { attempts: 2 })), "attempt 2");
});

test("visible window: the rows in view plus the overscan, clamped", () => {
  assert.deepEqual(visibleWindow(0, 312, 26, 0), { first: 0, last: 0 });
  assert.deepEqual(visibleWindow(0, 312, 26, 5, 6), { first: 0, last: 5 });
  assert.deepEqual(visibleWindow(2600, 312, 26, 1000, 6), { first: 94, last: 118 });
  assert.deepEqual(visibleWindow(1e9, 312, 26, 1000, 6), { first: 1000, last: 1000 });
});

test("job view: filter over the sorted jobs; positions follow", () => {
  const v = new JobView();
  v.setJobs([job(1), job(2, { task_name: "spikes" }), job(3)]);
  assert.deepEqual(v.rows.map((j) => j.job_id), ["job00003", "job00002", "job00001"]);
  assert.equal(v.setFilter("  SPIKES "), true);
  assert.equal(v.setFilter("spikes"), false, "the same filter again: nothing to redo");
  assert.deepEqual(v.rows.map((j) => j.job_id), ["job00002"]);
  assert.equal(v.positionOf("job00002"), 0);
  assert.equal(v.positionOf("job00001"), -1);
  v.setJobs([job(4, { task_name: "spikes" }), ...v.all]);
  assert.deepEqual(v.rows.map((j) => j.job_id), ["job00004", "job00002"], "a new snapshot is filtered too");
});

// ------------------------------------------------------------------ the panel

test("asks for a snapshot once per model; every view draws the same snapshot", () => {
  const m = model();
  widget.initialize({ model: m });
  createPanel(m, el, sync);
  const other = document.createElement("div");
  createPanel(m, other, sync);
  assert.deepEqual(m.sent, [{ type: "ready" }]);
  snapshot(m, { backends: [backend("b1")], jobs: [job(1), job(2)] });
  assert.deepEqual(shownJobs(el), ["job00002", "job00001"]);
  assert.deepEqual(shownJobs(other), ["job00002", "job00001"]);
  assert.match(el.querySelector(".kc-task-section").textContent, /Handlers online: 1 on 1 backend$/);
  assert.equal(el.querySelector(".kc-task-count").textContent, "2 finished");
  click(el, "refresh");
  assert.deepEqual(m.sent.at(-1), { type: "refresh" });
});

test("handlers online: backend, who, heartbeat age on the kernel's clock, handlers", () => {
  const m = model();
  const panel = createPanel(m, el, { ...sync, clock: () => 5 }); // the browser's clock is far off
  snapshot(m, { now: T0 + 107, backends: [backend("b1", [["calculation", "mean_rate"], ["action", "notify"]], { this_kernel: true })] });
  const b = el.querySelector(".kc-task-backend");
  assert.equal(b.querySelector(".kc-task-backend-id").textContent, "b1");
  assert.equal(b.querySelector(".kc-task-backend-label").textContent, "notebook kernel lab1 pid 42 \u00b7 ada@example.org (this kernel)");
  assert.equal(b.querySelector(".kc-task-heartbeat").textContent, "heartbeat 7 s ago");
  assert.deepEqual([...b.querySelectorAll(".kc-task-handler")].map((x) => [x.textContent, x.className.includes("kc-type-action")]), [["mean_rate", false], ["notify", true]]);
  snapshot(m, { backends: [] });
  panel.redraw();
  assert.match(el.querySelector(".kc-task-backends").textContent, /No backend is serving this project/);
});

test("a row: status, name, duration, requester; an error expands to its traceback", () => {
  const m = model();
  createPanel(m, el, sync);
  const trace = 'Traceback (most recent call last):\n  File "<cell>", line 2, in mean_rate\nZeroDivisionError: division by zero';
  snapshot(m, { jobs: [job(1), job(2, { status: "error", finished_at: T0 + 4.1, error: { type: "ZeroDivisionError", message: "division by zero", traceback: trace } })] });
  const row = el.querySelector('.kc-task-job[data-job="job00002"]');
  assert.equal(row.dataset.status, "error");
  assert.deepEqual([...row.children].slice(1).map((c) => c.textContent).filter((t, i) => i !== 4), ["error", "mean_rate", "2.00 s", "ada@example.org", "ZeroDivisionError: division by zero"]);
  assert.equal(el.querySelector(".kc-task-detail").hidden, true);
  row.click();
  assert.equal(el.querySelector(".kc-task-detail").hidden, false);
  assert.equal(el.querySelector(".kc-task-traceback").textContent, trace);
  assert.equal(el.querySelector(".kc-task-error").textContent, "ZeroDivisionError: division by zero");
  assert.equal(el.querySelector('.kc-task-job[data-job="job00002"]').getAttribute("aria-expanded"), "true");
  click(el, "collapse");
  assert.equal(el.querySelector(".kc-task-detail").hidden, true);
  // A finished job has no error paragraph or traceback.
  el.querySelector('.kc-task-job[data-job="job00001"]').click();
  assert.equal(el.querySelector(".kc-task-error").hidden, true);
  assert.equal(el.querySelector(".kc-task-traceback").hidden, true);
});

test("a running job's duration ticks with the clock; a new snapshot updates the row in place", () => {
  const m = model();
  let t = 0;
  const panel = createPanel(m, el, { ...sync, clock: () => t });
  snapshot(m, { now: T0 + 10, jobs: [job(1, { status: "started", started_at: T0 + 8, finished_at: null, fraction: 0.25, message: "chunk 1" })] });
  const cell = () => el.querySelector(".kc-task-job .kc-task-duration").textContent;
  assert.equal(cell(), "2.00 s");
  t = 3;
  panel.redraw();
  assert.equal(cell(), "5.00 s");
  assert.equal(el.querySelector(".kc-task-job .kc-task-state").textContent, "started 25%");
  snapshot(m, { now: T0 + 14, jobs: [job(1, { status: "finished", started_at: T0 + 8, finished_at: T0 + 13.5 })] });
  assert.equal(cell(), "5.50 s");
  assert.equal(el.querySelector(".kc-task-job .kc-task-state").textContent, "finished");
});

test("values from the hub are text, never markup", () => {
  const m = model({ project_id: "<b>p</b>" });
  createPanel(m, el, sync);
  const evil = "<img src=x onerror=alert(1)>";
  snapshot(m, {
    backends: [backend(evil, [["calculation", evil]], { label: evil, user: evil })],
    jobs: [job(1, { task_name: evil, requested_by: evil, status: "error", error: { type: evil, message: evil, traceback: evil } })],
  });
  el.querySelector(".kc-task-job").click();
  assert.equal(el.querySelectorAll("img").length, 0);
  assert.equal(el.querySelectorAll("b").length, 0);
  assert.ok(el.querySelector(".kc-task-traceback").textContent.includes(evil));
  assert.ok(el.querySelector(".kc-task-title").textContent.includes("<b>p</b>"));
});

test("thousands of jobs: only the rows in view are in the DOM", () => {
  const m = model();
  const panel = createPanel(m, el, sync);
  const jobs = [];
  for (let n = 0; n < 5000; n++) jobs.push(job(n));
  snapshot(m, { jobs });
  assert.ok(el.querySelectorAll(".kc-task-job").length < 40, `${el.querySelectorAll(".kc-task-job").length} rows`);
  assert.equal(el.querySelector(".kc-task-spacer").style.height, `${5000 * ROW_HEIGHT}px`);
  assert.equal(panel.list.style.height, `${LIST_ROWS * ROW_HEIGHT + 2}px`, "a long list scrolls");
  snapshot(m, { jobs: jobs.slice(0, 3) });
  assert.equal(panel.list.style.height, `${3 * ROW_HEIGHT + 2}px`, "a short one is as tall as its rows");
  snapshot(m, { jobs });
  panel.list.scrollTop = 2500 * ROW_HEIGHT;
  panel.redraw();
  const shown = shownJobs(el);
  assert.ok(shown.includes("job02499"), shown.join(","));
  assert.ok(shown.length < 40);
});

test("the filter narrows the list and says how many match", () => {
  const m = model();
  createPanel(m, el, sync);
  snapshot(m, { jobs: [job(1), job(2, { task_name: "spikes" }), job(3, { requested_by: "bob@example.org" })] });
  const input = el.querySelector(".kc-task-filter");
  input.value = "bob";
  input.dispatchEvent(new window.Event("input"));
  assert.deepEqual(shownJobs(el), ["job00003"]);
  assert.equal(el.querySelector(".kc-task-count").textContent, "1 of 3 match");
  input.value = "nothing";
  input.dispatchEvent(new window.Event("input"));
  assert.equal(el.querySelector(".kc-task-empty").textContent, "No job matches the filter.");
});

test("status trait: live, error with its message, closed", () => {
  const m = model();
  createPanel(m, el, sync);
  assert.equal(el.querySelector(".kc-task-status").textContent, "live");
  assert.equal(el.querySelector(".kc-task-section").textContent, "Loading\u2026", "before the first snapshot");
  m.set("status_message", "HubUnavailableError: the hub at http://x cannot be reached");
  m.set("status", "error");
  assert.equal(el.querySelector(".kc-task-status").textContent, "HubUnavailableError: the hub at http://x cannot be reached");
  assert.ok(el.querySelector(".kc-task-status").className.includes("kc-status-error"));
});

test("dispose stops listening and ticking", () => {
  const m = model();
  const panel = createPanel(m, el, { schedule: (f) => f(), tick: true });
  const before = m.listenerCount();
  panel.dispose();
  assert.equal(m.listenerCount(), before - 3, "the three trait listeners are gone");
});
