// Rate: the paper's labelling. A prompt, three images generated from it, each marked good, bad or skip.
// Keys: 1-3 pick an image, g / b / s label the picked one (then the next), u undoes the last label, n or Enter
// brings the next prompt. Each label is one POST /feedback; undo is DELETE /feedback/{id}.

import { api, type FeedbackOut, type FeedbackRequest, type GenerateRequest, type GenerateResponse } from "./api";
import prompts from "./shapes-prompts.json";
import { append, h, pngSource, progress, showError } from "./ui";

const IMAGES_PER_PROMPT = 3;
const RATER_STORAGE = "t2i-align.rater";
const LABELS = [
  ["good", "g", "Good"],
  ["bad", "b", "Bad"],
  ["skip", "s", "Skip"],
] as const;
type Label = (typeof LABELS)[number][0];

interface Card {
  imageId: string;
  element: HTMLElement;
  buttons: HTMLButtonElement[];
  /** Set synchronously on the first click, so a double click sends one rating. */
  state: "open" | "sending" | "labelled";
  label?: Label;
  feedbackId?: string;
}

const categories = prompts as Record<string, string[]>;

function randomPrompt(): { text: string; category: string } {
  const names = Object.keys(categories);
  const category = names[Math.floor(Math.random() * names.length)];
  const pool = categories[category];
  return { text: pool[Math.floor(Math.random() * pool.length)], category };
}

export function ratePage(root: HTMLElement): () => void {
  const counts: Record<Label, number> = { good: 0, bad: 0, skip: 0 };
  let cards: Card[] = [];
  let focused = 0;
  let history: Card[] = [];
  let loading = false;

  const rater = h("input", {
    name: "rater",
    type: "text",
    maxlength: 128,
    placeholder: "your name",
    value: localStorage.getItem(RATER_STORAGE) ?? "",
  });
  rater.addEventListener("change", () => localStorage.setItem(RATER_STORAGE, rater.value.trim()));
  const custom = h("input", { name: "prompt", type: "text", placeholder: "or type a prompt to rate" });
  const next = h("button", { type: "button" }, "Next prompt (n)");
  const undo = h("button", { type: "button", class: "secondary", disabled: true }, "Undo last label (u)");
  const count = h("p", { class: "count", "data-testid": "rating-count", "aria-live": "polite" });
  const heading = h("h2", { class: "prompt", "data-testid": "rating-prompt" });
  const status = h("div", { class: "status", hidden: true });
  const error = h("div", { class: "error", hidden: true });
  const grid = h("div", { class: "image-grid rate-grid" });
  const controls = h("div", { class: "card form-grid" });
  append(
    controls,
    h("label", {}, "Rater", rater),
    h("label", {}, "Prompt", custom),
    h("div", { class: "row wide" }, next, undo),
    h(
      "p",
      { class: "muted wide" },
      "Keys: ",
      h("kbd", {}, "1"),
      "–",
      h("kbd", {}, "3"),
      " pick an image · ",
      h("kbd", {}, "g"),
      " good · ",
      h("kbd", {}, "b"),
      " bad · ",
      h("kbd", {}, "s"),
      " skip · ",
      h("kbd", {}, "u"),
      " undo · ",
      h("kbd", {}, "n"),
      " next prompt",
    ),
  );
  append(root, h("h1", {}, "Rate"), controls, count, heading, status, error, grid);

  function showCount(): void {
    const total = counts.good + counts.bad + counts.skip;
    count.textContent = `${total} rated this session: ${counts.good} good, ${counts.bad} bad, ${counts.skip} skipped`;
  }

  function focus(index: number): void {
    focused = Math.max(0, Math.min(cards.length - 1, index));
    cards.forEach((card, position) => card.element.classList.toggle("focused", position === focused));
  }

  function paint(card: Card): void {
    card.element.dataset.state = card.state;
    card.element.dataset.label = card.label ?? "";
    card.buttons.forEach((button) => {
      button.disabled = card.state !== "open";
      button.classList.toggle("chosen", button.value === card.label);
    });
  }

  async function label(card: Card, value: Label): Promise<void> {
    if (card.state !== "open") return;
    card.state = "sending";
    paint(card);
    showError(error, null);
    try {
      const body: FeedbackRequest = { image_id: card.imageId, label: value };
      if (rater.value.trim()) body.rater = rater.value.trim();
      const stored = await api<FeedbackOut>("POST", "/feedback", body);
      card.state = "labelled";
      card.label = value;
      card.feedbackId = stored.id;
      counts[value] += 1;
      history.push(card);
      undo.disabled = false;
      showCount();
      const open = cards.findIndex((other) => other.state === "open");
      if (open >= 0) focus(open);
      else next.focus();
    } catch (err) {
      card.state = "open";
      showError(error, err, controls);
    }
    paint(card);
  }

  async function undoLast(): Promise<void> {
    const card = history.pop();
    undo.disabled = history.length === 0;
    if (!card?.feedbackId || card.state !== "labelled") return;
    card.state = "sending";
    paint(card);
    try {
      await api("DELETE", `/feedback/${encodeURIComponent(card.feedbackId)}`);
      if (card.label) counts[card.label] -= 1;
      card.state = "open";
      card.label = undefined;
      card.feedbackId = undefined;
      showCount();
      focus(cards.indexOf(card));
    } catch (err) {
      card.state = "labelled";
      history.push(card);
      undo.disabled = false;
      showError(error, err);
    }
    paint(card);
  }

  async function load(): Promise<void> {
    if (loading) return;
    const typed = custom.value.trim();
    const chosen = typed ? { text: typed, category: "your prompt" } : randomPrompt();
    loading = true;
    next.disabled = true;
    showError(error, null, controls);
    const indicator = progress(status, `Generating ${IMAGES_PER_PROMPT} images…`);
    try {
      const request: GenerateRequest = { prompt: chosen.text, n: IMAGES_PER_PROMPT };
      const response = await api<GenerateResponse>("POST", "/generate", request);
      const missing = response.images.some((image) => !image.image_id);
      if (missing) throw new Error("The server does not keep generated images (--image-retention 0), so they cannot be rated by id.");
      history = [];
      undo.disabled = true;
      heading.replaceChildren(h("span", { class: "muted" }, `${chosen.category}: `), chosen.text);
      grid.replaceChildren();
      cards = response.images.map((image, index) => {
        const buttons = LABELS.map(([value, key, text]) =>
          h("button", { type: "button", value, class: `label-${value}`, title: `${text} (${key})` }, text),
        );
        const element = h(
          "figure",
          { class: "image-card", "data-testid": "rate-card" },
          h("img", { src: pngSource(image.png_base64), alt: `${chosen.text}, image ${index + 1}` }),
          h("figcaption", {}, h("span", { class: "muted" }, `${index + 1}`), h("span", { class: "row" }, ...buttons)),
        );
        const card: Card = { imageId: image.image_id as string, element, buttons, state: "open" };
        buttons.forEach((button) => button.addEventListener("click", () => void label(card, button.value as Label)));
        element.addEventListener("click", () => focus(cards.indexOf(card)));
        paint(card);
        return card;
      });
      grid.append(...cards.map((card) => card.element));
      focus(0);
      custom.value = "";
    } catch (err) {
      showError(error, err, controls);
    } finally {
      indicator.stop();
      status.hidden = true;
      loading = false;
      next.disabled = false;
    }
  }

  function onKey(event: KeyboardEvent): void {
    const target = event.target as HTMLElement;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target.closest("input, textarea, select, dialog")) {
      if (event.key === "Enter" && target === custom) void load();
      return;
    }
    const key = event.key.toLowerCase();
    const labelled = LABELS.find(([, shortcut]) => shortcut === key);
    if (labelled && cards[focused]) {
      event.preventDefault();
      void label(cards[focused], labelled[0]);
    } else if (["1", "2", "3"].includes(key)) {
      focus(Number(key) - 1);
    } else if (key === "u") {
      void undoLast();
    } else if (key === "n" || (key === "enter" && !target.closest("button"))) {
      event.preventDefault();
      void load();
    } else if (key === "arrowright") {
      focus(focused + 1);
    } else if (key === "arrowleft") {
      focus(focused - 1);
    }
  }

  next.addEventListener("click", () => void load());
  undo.addEventListener("click", () => void undoLast());
  document.addEventListener("keydown", onKey);
  showCount();
  void load();
  return () => document.removeEventListener("keydown", onKey);
}
