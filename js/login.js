// Sign-in panel of kachery-jupyter (anywidget front end).
//
// The kernel does the work: it asks the hub for a registration link, polls
// the hub until the user has confirmed, and updates `state`. This module only
// shows the state and sends the user's clicks back. Nothing here relies on
// window.opener or postMessage reaching back, so it works in Colab too.
// Every value from the kernel or the hub is set with textContent or as a
// property, never as HTML.

import { h } from "./common.js";

const STATES = [
  "no_hub",
  "checking",
  "unreachable",
  "signed_out",
  "starting",
  "waiting",
  "expired",
  "refused",
  "signed_in",
  "error",
];

function button(label, action, onClick, primary = false) {
  return h("button", {
    className: primary ? "kc-button kc-primary" : "kc-button",
    type: "button",
    dataset: { action },
    text: label,
    onclick: onClick,
  });
}

function message(text, kind = "info") {
  return text ? h("p", { className: `kc-message kc-${kind}`, text }) : null;
}

function tokenForm(model, primary = false) {
  const input = h("input", {
    className: "kc-token",
    type: "password",
    placeholder: "sign-in token",
    "aria-label": "sign-in token",
  });
  const submit = () => {
    const token = input.value.trim();
    if (token) model.send({ type: "token", token });
  };
  input.addEventListener("keydown", (e) => e.key === "Enter" && submit());
  return h("div", { className: "kc-row" }, [input, button("Use token", "token", submit, primary)]);
}

function tokenHint() {
  return h("p", { className: "kc-hint" }, [
    "A sign-in token comes from whoever runs this hub: they make one with ",
    h("code", { text: "kachery-hub token create --user YOUR-EMAIL" }),
    ".",
  ]);
}

// The ways in the hub offers (GET /api/sign-in-methods), best first. With an identity
// provider: "Sign in with <it>", then the token field. Without one: the token field and where a
// token comes from, then the hub's own page (for a browser already signed in to the hub). A
// hub that does not say (older): the browser page first, since it offers whatever the hub has.
function signInChoices(model, ui) {
  const methods = model.get("sign_in_methods") || {};
  const start = (label, primary) =>
    h("div", { className: "kc-row" }, [
      button(label, "sign-in", () => {
        ui.opener.openBlank();
        model.send({ type: "start" });
      }, primary),
    ]);
  if (methods.oidc && methods.oidc.name) {
    return [start(`Sign in with ${methods.oidc.name}`, true), tokenForm(model)];
  }
  if ("oidc" in methods) {
    return [
      tokenForm(model, true),
      tokenHint(),
      start("Sign in in a browser window", false),
    ];
  }
  return [start("Sign in in a browser window", true), tokenForm(model)];
}

function hubForm(model) {
  const input = h("input", {
    className: "kc-hub-url",
    type: "url",
    placeholder: "https://hub.example.org",
    "aria-label": "hub URL",
  });
  input.value = model.get("hub_url") || "";
  const submit = () => {
    const url = input.value.trim();
    if (url) model.send({ type: "connect", hub_url: url });
  };
  input.addEventListener("keydown", (e) => e.key === "Enter" && submit());
  return h("div", { className: "kc-row" }, [input, button("Connect", "connect", submit, true)]);
}

function computerLine(model) {
  const label = model.get("client_label");
  return label ? h("p", { className: "kc-computer", text: `This computer: ${label}` }) : null;
}

function projectPicker(model) {
  const projects = model.get("projects") || [];
  if (projects.length === 0) return null;
  const select = h("select", { className: "kc-project", "aria-label": "default project" });
  for (const p of projects) {
    // Names repeat ("default" of each member): the owner tells them apart, the ID settles it.
    const detail = p.owner ? `${p.owner}, ${p.id}` : p.id;
    const option = h("option", { text: p.name ? `${p.name} (${detail})` : p.id });
    option.value = p.id;
    select.append(option);
  }
  select.value = model.get("default_project") || "";
  select.addEventListener("change", () => model.send({ type: "set_project", project_id: select.value }));
  return h("label", { className: "kc-row" }, [h("span", { text: "Default project " }), select]);
}

// Opens the sign-in window on the click itself (browsers only allow popups
// there), and points it at the registration link once the kernel has it.
export function createSignInOpener(win = globalThis.window) {
  let popup = null;
  let shown = null;
  return {
    openBlank() {
      shown = null;
      try {
        popup = win.open("", "_blank");
      } catch {
        popup = null;
      }
      if (!popup) return false;
      try {
        popup.opener = null; // the hub's page gets no handle on the notebook
      } catch {
        // some browsers make it read-only; harmless
      }
      return true;
    },
    // Points the window at `url` once; redraws for the same URL leave it alone.
    navigate(url) {
      if (!popup || popup.closed) return false;
      if (shown !== url) {
        popup.location.href = url;
        shown = url;
      }
      return true;
    },
    get blocked() {
      return popup === null || popup === undefined;
    },
  };
}

export function view(model, ui) {
  const state = model.get("state");
  const hub = model.get("hub_url");
  const msg = model.get("message");
  const parts = [h("div", { className: "kc-title", text: "kachery" })];
  const hubLine = hub ? h("p", { className: "kc-hub", text: `Hub: ${hub}` }) : null;

  switch (state) {
    case "no_hub":
      parts.push(message("Enter the address of your kachery hub.", "info"), hubForm(model), message(msg, "error"));
      break;
    case "checking":
      parts.push(hubLine, message("Contacting the hub…", "info"));
      break;
    case "unreachable":
      parts.push(
        hubLine,
        message(msg || "The hub cannot be reached.", "error"),
        h("div", { className: "kc-row" }, [button("Retry", "retry", () => model.send({ type: "retry" }), true)]),
        hubForm(model),
      );
      break;
    case "signed_out":
    case "expired":
    case "refused":
    case "error": {
      const note = {
        expired: "The sign-in link expired before it was confirmed. Try again.",
        refused: "Sign-in was refused.",
        error: "Something went wrong.",
      }[state];
      parts.push(hubLine, computerLine(model));
      if (note) parts.push(message(msg ? `${note} ${msg}` : note, "error"));
      else if (msg) parts.push(message(msg, "info"));
      parts.push(...signInChoices(model, ui));
      break;
    }
    case "starting":
      parts.push(hubLine, message("Preparing the sign-in page…", "info"));
      break;
    case "waiting": {
      const url = model.get("registration_url");
      const link = h("a", { className: "kc-link", href: url, target: "_blank", rel: "noopener", text: "open the sign-in page" });
      const opened = ui.opener.navigate(url);
      parts.push(
        hubLine,
        computerLine(model),
        message(
          opened
            ? "Finish signing in in the new window; this panel updates by itself."
            : "The browser blocked the sign-in window. Use this link instead:",
          opened ? "info" : "warning",
        ),
        h("p", { className: "kc-row" }, [link]),
        h("div", { className: "kc-row" }, [button("Cancel", "cancel", () => model.send({ type: "cancel" }))]),
      );
      break;
    }
    case "signed_in":
      parts.push(
        hubLine,
        h("p", { className: "kc-signed-in", text: `Signed in as ${model.get("email")}` }),
        projectPicker(model),
        message(msg, "info"),
        h("div", { className: "kc-row" }, [button("Sign out", "sign-out", () => model.send({ type: "sign_out" }))]),
      );
      break;
    default:
      parts.push(message(`Unknown state ${String(state)}`, "error"));
  }
  return h("div", { className: `kc-theme kc-login kc-state-${STATES.includes(state) ? state : "unknown"}` }, parts);
}

function render({ model, el }) {
  const ui = { opener: createSignInOpener() };
  const draw = () => el.replaceChildren(view(model, ui));
  const events = [
    "state",
    "message",
    "hub_url",
    "registration_url",
    "email",
    "projects",
    "default_project",
    "client_label",
    "sign_in_methods",
  ];
  for (const name of events) model.on(`change:${name}`, draw);
  draw();
  return () => {
    for (const name of events) model.off(`change:${name}`, draw);
  };
}

export default { render };
