// Small DOM helpers: element building, inline error boxes next to the field the server named, a progress
// indicator, and the formatting the pages share.

import { api, ApiError, describe, type ModelList } from "./api";

type Child = Node | string | number | null | undefined | false;
type Attributes = Record<string, string | number | boolean | null | undefined | EventListener>;

/** `h("button", {class: "x", onclick: f}, "Go")`. Attributes starting with `on` are listeners. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value as EventListener);
    } else if (name === "style") {
      // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
      for (const declaration of String(value).split(";")) {
        const [property, ...rest] = declaration.split(":");
        if (property.trim()) element.style.setProperty(property.trim(), rest.join(":").trim());
      }
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, ...children);
  return element;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
}

/** An alert box for a failed call, or null to clear it. Marks the field named by `param` in `form`. */
export function showError(box: HTMLElement, error: unknown, form?: HTMLElement): void {
  box.replaceChildren();
  form?.querySelectorAll(".invalid").forEach((field) => field.classList.remove("invalid"));
  form?.querySelectorAll(".field-error").forEach((note) => note.remove());
  if (error === null || error === undefined) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.setAttribute("role", "alert");
  append(box, describe(error));
  if (form && error instanceof ApiError && error.param) fieldError(form, error.param, error.message);
}

/** An inline message under the field whose `name` (or data-param) is `param`. Returns whether it found one. */
export function fieldError(form: HTMLElement, param: string, message: string): boolean {
  const root = param.split(/[.[]/)[0];
  const field =
    form.querySelector<HTMLElement>(`[name="${CSS.escape(param)}"]`) ??
    form.querySelector<HTMLElement>(`[data-param="${CSS.escape(param)}"]`) ??
    form.querySelector<HTMLElement>(`[name="${CSS.escape(root)}"]`);
  if (!field) return false;
  field.classList.add("invalid");
  field.setAttribute("aria-invalid", "true");
  const note = h("div", { class: "field-error", role: "alert" }, message);
  (field.closest("label") ?? field).after(note);
  return true;
}

/** An indeterminate progress bar with the seconds elapsed; `stop()` removes it. */
export function progress(box: HTMLElement, label: string): { stop: () => void } {
  const started = performance.now();
  const seconds = h("span", { class: "elapsed" }, "0.0 s");
  const bar = h(
    "div",
    { class: "progress", role: "progressbar", "aria-label": label, "aria-busy": "true" },
    h("div", { class: "progress-track" }, h("div", { class: "progress-indeterminate" })),
    h("span", {}, label, " ", seconds),
  );
  box.replaceChildren(bar);
  box.hidden = false;
  const timer = window.setInterval(() => {
    seconds.textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
  }, 100);
  return {
    stop() {
      window.clearInterval(timer);
      bar.remove();
    },
  };
}

export function progressBar(fraction: number, label?: string): HTMLElement {
  const percent = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  return h(
    "div",
    { class: "progress", role: "progressbar", "aria-valuenow": percent, "aria-valuemin": 0, "aria-valuemax": 100 },
    h("div", { class: "progress-track" }, h("div", { class: "progress-fill", style: `width: ${percent}%` })),
    h("span", {}, label ?? `${percent}%`),
  );
}

export function formatNumber(value: unknown, digits = 3): string {
  if (typeof value !== "number" || !Number.isFinite(value)) return value === null || value === undefined ? "–" : String(value);
  if (Number.isInteger(value)) return String(value);
  return value.toFixed(digits);
}

export function formatTime(millis: number | null | undefined): string {
  if (!millis) return "–";
  return new Date(millis).toLocaleString();
}

export function formatDuration(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

export function badge(text: string, kind = text): HTMLElement {
  return h("span", { class: `badge badge-${kind}` }, text);
}

export function pngSource(base64: string): string {
  return `data:image/png;base64,${base64}`;
}

/** A line chart of (x, y) points as inline SVG, for the trainer's loss. */
export function lineChart(points: [number, number][], label: string): SVGSVGElement {
  const width = 480;
  const height = 160;
  const pad = 32;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  if (points.length === 0) return svg;
  const xs = points.map(([x]) => x);
  const ys = points.map(([, y]) => y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const sx = (x: number) => pad + ((x - x0) / (x1 - x0 || 1)) * (width - 2 * pad);
  const sy = (y: number) => height - pad + 8 - ((y - y0) / (y1 - y0 || 1)) * (height - 2 * pad);
  const path = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  path.setAttribute("points", points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "));
  path.setAttribute("class", "chart-line");
  svg.appendChild(path);
  const text = (x: number, y: number, content: string, anchor = "start") => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", "text");
    node.setAttribute("x", String(x));
    node.setAttribute("y", String(y));
    node.setAttribute("text-anchor", anchor);
    node.setAttribute("class", "chart-label");
    node.textContent = content;
    svg.appendChild(node);
  };
  text(2, pad - 12, formatNumber(y1, 4));
  text(2, height - 4, formatNumber(y0, 4));
  text(width - 2, height - 4, `step ${x1}`, "end");
  return svg;
}

/** A number typed into a form: undefined when left empty; null (after a message under the field named `param`)
 * when it is not a number from `low` to `high`, or not whole where `integer` asks for that; else the number. */
export function checkedNumber(
  form: HTMLElement,
  param: string,
  raw: string,
  low: number,
  high: number,
  integer: boolean,
): number | null | undefined {
  if (!raw) return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < low || value > high || (integer && !Number.isInteger(value))) {
    const top = high === Number.MAX_SAFE_INTEGER ? "2^53" : high;
    fieldError(form, param, `${integer ? "A whole number" : "A number"} from ${low} to ${top}. Given: ${raw}`);
    return null;
  }
  return value;
}

/** Adds the diffusion versions (`GET /models`, fetched once) to each select, the active one marked, and
 * resolves to the active version's id. The list is optional: without it the selects keep their first choices,
 * and the promise resolves to null. */
export function addVersions(...selects: HTMLSelectElement[]): Promise<string | null> {
  return api<ModelList>("GET", "/models")
    .then((list) => {
      for (const version of list.data.filter((entry) => entry.kind === "diffusion")) {
        const label = version.active ? `${version.id} (active)` : version.id;
        for (const select of selects) select.append(h("option", { value: version.id }, label));
      }
      return list.active;
    })
    .catch(() => null);
}
