import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { FakeModel, click, installDom } from "./fake_model.mjs";

installDom();
const { default: widget, createSignInOpener } = await import("../login.js");

function fakeWindow({ blocked = false } = {}) {
  const opened = [];
  return {
    opened,
    open() {
      if (blocked) return null;
      const popup = { closed: false, opener: "notebook", location: { href: "about:blank" } };
      opened.push(popup);
      return popup;
    },
  };
}

const base = {
  state: "signed_out",
  hub_url: "http://127.0.0.1:8123",
  message: "",
  registration_url: "",
  email: "",
  projects: [],
  default_project: "",
};

let el;
beforeEach(() => {
  el = document.createElement("div");
  document.body.replaceChildren(el);
});

test("no hub: a URL field whose value is sent on Connect", () => {
  const model = new FakeModel({ ...base, state: "no_hub", hub_url: "" });
  widget.render({ model, el });
  el.querySelector(".kc-hub-url").value = "http://hub.test";
  click(el, "connect");
  assert.deepEqual(model.sent, [{ type: "connect", hub_url: "http://hub.test" }]);
});

test("signed out: Google button asks the kernel to start; token field sends the token", () => {
  const model = new FakeModel(base);
  widget.render({ model, el });
  assert.match(el.textContent, /Hub: http:\/\/127\.0\.0\.1:8123/);
  click(el, "sign-in");
  el.querySelector(".kc-token").value = "  tok-123 ";
  click(el, "token");
  assert.deepEqual(model.sent, [{ type: "start" }, { type: "token", token: "tok-123" }]);
});

test("empty token is not sent", () => {
  const model = new FakeModel(base);
  widget.render({ model, el });
  click(el, "token");
  assert.deepEqual(model.sent, []);
});

test("the sign-in window is opened on the click and pointed at the link once", () => {
  const win = fakeWindow();
  const opener = createSignInOpener(win);
  assert.equal(opener.openBlank(), true);
  assert.equal(win.opened[0].opener, null, "the hub page gets no handle on the notebook");
  assert.equal(opener.navigate("http://hub/register/abc"), true);
  win.opened[0].location.href = "http://hub/after-login";
  assert.equal(opener.navigate("http://hub/register/abc"), true);
  assert.equal(win.opened[0].location.href, "http://hub/after-login", "a redraw does not reload the page");
});

test("popup blocked: a plain link is shown instead", () => {
  const opener = createSignInOpener(fakeWindow({ blocked: true }));
  assert.equal(opener.openBlank(), false);
  assert.equal(opener.blocked, true);
  assert.equal(opener.navigate("http://hub/register/abc"), false);

  globalThis.window.open = () => null;
  const model = new FakeModel(base);
  widget.render({ model, el });
  click(el, "sign-in");
  model.set("registration_url", "http://hub/register/abc");
  model.set("state", "waiting");
  assert.match(el.textContent, /blocked the sign-in window/);
  const link = el.querySelector("a.kc-link");
  assert.equal(link.getAttribute("href"), "http://hub/register/abc");
  assert.equal(link.getAttribute("target"), "_blank");
  click(el, "cancel");
  assert.deepEqual(model.sent.at(-1), { type: "cancel" });
});

test("signed in: email, project picker and sign out", () => {
  const model = new FakeModel({
    ...base,
    state: "signed_in",
    email: "ada@example.org",
    projects: [
      { id: "p1", name: "first" },
      { id: "p2", name: "second" },
    ],
    default_project: "p2",
  });
  widget.render({ model, el });
  assert.equal(el.querySelector(".kc-signed-in").textContent, "Signed in as ada@example.org");
  const select = el.querySelector("select.kc-project");
  assert.equal(select.value, "p2");
  select.value = "p1";
  select.dispatchEvent(new window.Event("change"));
  click(el, "sign-out");
  assert.deepEqual(model.sent, [{ type: "set_project", project_id: "p1" }, { type: "sign_out" }]);
});

for (const [state, text] of [
  ["unreachable", /cannot be reached/],
  ["expired", /expired before it was confirmed/],
  ["refused", /Sign-in was refused/],
  ["error", /Something went wrong/],
  ["checking", /Contacting the hub/],
  ["starting", /Preparing the sign-in page/],
]) {
  test(`state ${state} says so`, () => {
    const model = new FakeModel({ ...base, state });
    widget.render({ model, el });
    assert.match(el.textContent, text);
    assert.ok(el.querySelector(`.kc-state-${state}`));
  });
}

test("unreachable: retry is sent", () => {
  const model = new FakeModel({ ...base, state: "unreachable", message: "connection refused" });
  widget.render({ model, el });
  assert.match(el.textContent, /connection refused/);
  click(el, "retry");
  assert.deepEqual(model.sent, [{ type: "retry" }]);
});

test("values from the hub are shown as text, never as HTML", () => {
  const evil = "<img src=x onerror=alert(1)>";
  const model = new FakeModel({
    ...base,
    state: "signed_in",
    email: evil,
    hub_url: evil,
    message: evil,
    client_label: evil,
    projects: [{ id: "p", name: evil }],
    default_project: "p",
  });
  widget.render({ model, el });
  assert.equal(el.querySelectorAll("img").length, 0);
  assert.ok(el.textContent.includes(`Signed in as ${evil}`));
  model.set("state", "refused");
  assert.equal(el.querySelectorAll("img").length, 0);
  assert.ok(el.textContent.includes(evil));
  assert.equal(el.querySelector(".kc-computer").textContent, `This computer: ${evil}`);
});

test("the panel follows state changes and its listeners are removed on cleanup", () => {
  const model = new FakeModel(base);
  const cleanup = widget.render({ model, el });
  model.set("email", "ada@example.org");
  model.set("state", "signed_in");
  assert.match(el.textContent, /Signed in as ada@example.org/);
  assert.ok(model.listenerCount() > 0);
  cleanup();
  assert.equal(model.listenerCount(), 0);
});
