// The console's shell: a hash router over the four pages, the health line and the API-key dialog.

import "./style.css";
import { api, apiKey, AUTH_REQUIRED, type HealthResponse, setApiKey } from "./api";
import { jobsPage } from "./jobs";
import { modelsPage } from "./models";
import { playgroundPage } from "./playground";
import { ratePage } from "./rate";

/** A page draws itself into `root` and returns what stops its timers when the user leaves it. */
export type Page = (root: HTMLElement, args: string[]) => () => void;

const pages: Record<string, Page> = {
  playground: playgroundPage,
  rate: ratePage,
  jobs: jobsPage,
  models: modelsPage,
};

const root = document.getElementById("page") as HTMLElement;
let leave: (() => void) | null = null;

function route(): void {
  const [name, ...args] = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  const page = pages[name ?? ""] ? name : "playground";
  leave?.();
  root.replaceChildren();
  document.querySelectorAll<HTMLAnchorElement>("#nav a").forEach((link) => {
    link.classList.toggle("active", link.dataset.page === page);
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  });
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · t2i-align`;
  leave = pages[page](root, args);
}

// --- API key ---
const dialog = document.getElementById("key-dialog") as HTMLDialogElement;
const keyInput = document.getElementById("key-input") as HTMLInputElement;
const keyReason = document.getElementById("key-reason") as HTMLElement;
const keyButton = document.getElementById("key-button") as HTMLButtonElement;

function showKeyState(): void {
  keyButton.textContent = apiKey() ? "API key ✓" : "API key";
}

function askForKey(reason: string): void {
  keyReason.textContent = reason;
  keyInput.value = "";
  if (!dialog.open) dialog.showModal();
  keyInput.focus();
}

keyButton.addEventListener("click", () =>
  askForKey(apiKey() ? "A key is set for this tab. Enter another, or forget it." : "Enter an API key for this tab."),
);
dialog.addEventListener("close", () => {
  if (dialog.returnValue === "save" && keyInput.value.trim()) setApiKey(keyInput.value.trim());
  if (dialog.returnValue === "forget") setApiKey(null);
  keyInput.value = "";
  showKeyState();
});
window.addEventListener(AUTH_REQUIRED, (event) => {
  const message = (event as CustomEvent<string>).detail;
  askForKey(
    apiKey()
      ? `The server refused this tab's key: ${message}. It may have expired or been revoked; enter a valid one, then try again.`
      : `The server needs an API key: ${message}. Enter one, then try again.`,
  );
});

// --- Health ---
const health = document.getElementById("health") as HTMLElement;
async function refreshHealth(): Promise<void> {
  try {
    const status = await api<HealthResponse>("GET", "/health");
    health.textContent = `${status.model} · ${status.execution_provider ?? status.device} · ${status.ready ? "ready" : "loading"}`;
    health.className = `health ${status.ready ? "ok" : "warn"}`;
  } catch {
    health.textContent = "server unreachable";
    health.className = "health bad";
  }
}

showKeyState();
window.addEventListener("hashchange", route);
route();
void refreshHealth();
window.setInterval(refreshHealth, 10_000);
