// A stand-in for anywidget's model (get/set/on/off/send) and a DOM from jsdom,
// so the widgets' front ends are tested in Node without a browser.
import { JSDOM } from "jsdom";

export function installDom() {
  const dom = new JSDOM("<!doctype html><html><body></body></html>");
  globalThis.document = dom.window.document;
  globalThis.window = dom.window;
  return dom;
}

export class FakeModel {
  constructor(state) {
    this.state = { ...state };
    this.handlers = new Map();
    this.sent = [];
  }
  get(name) {
    return this.state[name];
  }
  set(name, value) {
    this.state[name] = value;
    for (const fn of this.handlers.get(`change:${name}`) ?? []) fn();
  }
  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(fn);
  }
  off(event, fn) {
    this.handlers.get(event)?.delete(fn);
  }
  send(msg) {
    this.sent.push(msg);
  }
  listenerCount() {
    let n = 0;
    for (const set of this.handlers.values()) n += set.size;
    return n;
  }
}

export function click(el, action) {
  const target = el.querySelector(`[data-action="${action}"]`);
  if (!target) throw new Error(`no button ${action} in: ${el.textContent}`);
  target.click();
}
