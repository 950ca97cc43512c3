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

test("signed out: the sign-in button asks the kernel to start; token field sends the token", () => {
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

function buttonLabels(root) {
  return [...root.querySelectorAll("button")].map((b) => [b.textContent, b.classList.contains("kc-primary")]);
}

test("a hub with an identity provider: 'Sign in with' it first, then the token field", () => {
  const model = new FakeModel({ ...base, sign_in_methods: { oidc: { name: "Google" }, token: true } });
  widget.render({ model, el });
  assert.deepEqual(buttonLabels(el), [["Sign in with Google", true], ["Use token", false]]);
});

test("a hub without one: the token field first, where a token comes from, no 'Google'", () => {
  const model = new FakeModel({ ...base, sign_in_methods: { oidc: null, token: true } });
  widget.render({ model, el });
  assert.deepEqual(buttonLabels(el), [["Use token", true], ["Sign in in a browser window", false]]);
  assert.doesNotMatch(el.textContent, /Google/);
  assert.match(el.querySelector(".kc-hint").textContent, /kachery-hub token create --user/);
  const order = [...el.querySelectorAll(".kc-token, .kc-hint, button[data-action=sign-in]")].map((n) => n.className);
  assert.deepEqual(order, ["kc-token", "kc-hint", "kc-button"]);
});

test("a hub that does not say: the browser page first, which offers whatever the hub has", () => {
  const model = new FakeModel({ ...base, sign_in_methods: {} });
  widget.render({ model, el });
  assert.deepEqual(buttonLabels(el), [["Sign in in a browser window", true], ["Use token", false]]);
  model.set("sign_in_methods", { oidc: { name: "login.example.org" }, token: true });
  assert.equal(el.querySelector("button[data-action=sign-in]").textContent, "Sign in with login.example.org");
});

test("projects of the same name are told apart by their owner", () => {
  const model = new FakeModel({
    ...base,
    state: "signed_in",
    email: "bob@example.org",
    projects: [
      { id: "p1", name: "default", owner: "ada@example.org" },
      { id: "p2", name: "default", owner: "bob@example.org" },
    ],
    default_project: "p2",
  });
  widget.render({ model, el });
  const options = [...el.querySelectorAll("select.kc-project option")].map((o) => o.textContent);
  assert.deepEqual(options, ["default (ada@example.org, p1)", "default (bob@example.org, p2)"]);
});

test("every part of the panel is inside the shared theme's root", () => {
  const model = new FakeModel(base);
  widget.render({ model, el });
  assert.ok(el.firstElementChild.classList.contains("kc-theme"));
});
