// Helpers every kachery widget shares. A widget imports them from "./common.js"; in the kernel,
// kachery_jupyter._assets.module() puts this file in place of that import, since a widget's front end
// reaches the page as one module text with nowhere for a relative import to point.

export const OVERSCAN = 6; // rows drawn beyond each edge of the view, for smooth scrolling

/** The rows [first, last) to draw of `count` rows of `rowHeight` px, scrolled to `scrollTop` in a view `viewHeight` px high. */
export function visibleWindow(scrollTop, viewHeight, rowHeight, count, overscan = OVERSCAN) {
  if (count <= 0 || rowHeight <= 0) return { first: 0, last: 0 };
  const top = Math.max(0, Math.floor(scrollTop / rowHeight));
  const bottom = Math.ceil((Math.max(0, scrollTop) + Math.max(0, viewHeight)) / rowHeight);
  const first = Math.min(count, Math.max(0, top - overscan));
  const last = Math.min(count, Math.max(first, bottom + overscan));
  return { first, last };
}

/** An element: `text` sets textContent (values are never parsed as HTML), `on…` adds listeners. */
export function h(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}
