"""Text against background, as the browser draws it: WCAG contrast ratios from getComputedStyle.

    for item in contrasts(panel):           # every control and every piece of text in the panel
        assert item["ratio"] >= 4.5, item

A control's background is its own composited over its ancestors' (down to the page's canvas);
its text colour is composited over that, so that translucent theme colours such as
``rgba(255, 255, 255, 0.87)`` count as they look.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Locator

#: WCAG 2 level AA, normal text
AA = 4.5

_CONTRASTS_JS = """(root) => {
  const parse = (css) => {
    const m = css.match(/rgba?\\(([^)]+)\\)/);
    if (!m) throw new Error(`unexpected colour ${css}`);
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const over = (top, bottom) => {
    const a = top.a + bottom.a * (1 - top.a);
    const mix = (k) => (a === 0 ? 0 : (top[k] * top.a + bottom[k] * bottom.a * (1 - top.a)) / a);
    return { r: mix("r"), g: mix("g"), b: mix("b"), a };
  };
  const canvas = () => {
    // The page's canvas: the root's or the body's background, else white.
    for (const node of [document.documentElement, document.body]) {
      const c = parse(getComputedStyle(node).backgroundColor);
      if (c.a > 0) return over(c, { r: 255, g: 255, b: 255, a: 1 });
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  const background = (el) => {
    const chain = [];
    for (let n = el; n && n.nodeType === 1; n = n.parentElement) chain.push(n);
    let bg = canvas();
    for (const n of chain.reverse()) bg = over(parse(getComputedStyle(n).backgroundColor), bg);
    return bg;
  };
  const luminance = (c) => {
    const lin = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * lin(c.r) + 0.7152 * lin(c.g) + 0.0722 * lin(c.b);
  };
  const hex = (c) => "#" + [c.r, c.g, c.b].map((v) => Math.round(v).toString(16).padStart(2, "0")).join("");
  const ownText = (el) =>
    [...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
  const shown = (el) => {
    const s = getComputedStyle(el);
    return s.display !== "none" && s.visibility !== "hidden" && el.getClientRects().length > 0;
  };
  const items = [];
  for (const el of [root, ...root.querySelectorAll("*")]) {
    const control = ["BUTTON", "INPUT", "SELECT", "A"].includes(el.tagName);
    const text = control ? (el.value || el.textContent || el.getAttribute("aria-label") || "").trim() : ownText(el);
    if (!text || el.tagName === "OPTION" || !shown(el)) continue;
    const bg = background(el);
    const fg = over(parse(getComputedStyle(el).color), bg);
    const [hi, lo] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
    items.push({
      what: `${el.tagName.toLowerCase()}${el.className ? "." + String(el.className).split(" ").join(".") : ""}`,
      text: text.slice(0, 40), fg: hex(fg), bg: hex(bg), ratio: Math.round(((hi + 0.05) / (lo + 0.05)) * 100) / 100,
    });
  }
  return items;
}"""


def contrasts(root: Locator) -> list[dict[str, Any]]:
    """Every shown control (button, input, select, link) and every element with text of its own."""
    items: list[dict[str, Any]] = root.evaluate(_CONTRASTS_JS)
    return items


def too_low(root: Locator, minimum: float = AA) -> list[dict[str, Any]]:
    """The items of :func:`contrasts` below ``minimum``."""
    return [item for item in contrasts(root) if item["ratio"] < minimum]
