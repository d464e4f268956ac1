// Playground: one prompt in, images out, with their rewards; best_of turns on rejection sampling.

import { api, ApiError, type GenerateRequest, type GenerateResponse } from "./api";
import { addVersions, append, checkedNumber, fieldError, formatNumber, h, pngSource, progress, showError } from "./ui";

const SCHEDULERS = ["ddim", "euler", "euler_a", "dpm++2m", "pndm", "lcm"];
/** Bounds the form checks before sending. The server's own limits (--max-prompt-bytes, --max-steps,
 * --max-images, ...) come back as inline messages naming the field when they are tighter. */
export const BOUNDS = { steps: [1, 200], guidance: [0, 30], n: [1, 8], bestOf: [1, 16], strength: [0.01, 1] } as const;

/** A file's bytes as base64, as `init_image` takes them. */
function fileBase64(file: File): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error ?? new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function numberField(name: string, label: string, attributes: Record<string, string | number>, hint: string) {
  return h(
    "label",
    {},
    label,
    h("input", { name, type: "number", inputmode: "decimal", ...attributes }),
    h("small", { class: "muted" }, hint),
  );
}

export function playgroundPage(root: HTMLElement): () => void {
  let controller: AbortController | null = null;
  const form = h("form", { class: "card form-grid", novalidate: true });
  const prompt = h("textarea", {
    name: "prompt",
    rows: 2,
    placeholder: "e.g. two red circles on a yellow background",
    required: true,
  });
  const negative = h("input", { name: "negative_prompt", type: "text", placeholder: "optional" });
  const scheduler = h(
    "select",
    { name: "scheduler" },
    h("option", { value: "" }, "the model's own"),
    ...SCHEDULERS.map((name) => h("option", { value: name }, name)),
  );
  const model = h("select", { name: "model" }, h("option", { value: "" }, "the active version"));
  const initImage = h("input", { name: "init_image", type: "file", accept: "image/png,image/jpeg" });
  const bestOf = h("input", { name: "best_of", type: "range", min: BOUNDS.bestOf[0], max: BOUNDS.bestOf[1], value: 1 });
  const bestOfValue = h("output", { for: "best_of" }, "1");
  bestOf.addEventListener("input", () => (bestOfValue.textContent = bestOf.value));
  const scores = h("input", { name: "return_candidate_scores", type: "checkbox" });
  const submit = h("button", { type: "submit" }, "Generate");
  const cancel = h("button", { type: "button", class: "secondary", hidden: true }, "Cancel");
  const status = h("div", { class: "status", hidden: true });
  const error = h("div", { class: "error", hidden: true });
  const results = h("section", { class: "results", "aria-live": "polite" });

  append(
    form,
    h("label", { class: "wide" }, "Prompt", prompt),
    h("label", { class: "wide" }, "Negative prompt", negative),
    numberField("steps", "Steps", { min: BOUNDS.steps[0], max: BOUNDS.steps[1], step: 1, placeholder: "default" }, "empty: the model's default"),
    numberField(
      "guidance_scale",
      "Guidance",
      { min: BOUNDS.guidance[0], max: BOUNDS.guidance[1], step: 0.5, placeholder: "default" },
      "1 or less turns guidance off",
    ),
    h("label", {}, "Scheduler", scheduler),
    numberField("seed", "Seed", { min: 0, step: 1, placeholder: "random" }, "image i uses seed + i"),
    numberField("n", "Images (n)", { min: BOUNDS.n[0], max: BOUNDS.n[1], step: 1, value: 1 }, `${BOUNDS.n[0]} to ${BOUNDS.n[1]}`),
    h("label", {}, "Version", model),
    h(
      "label",
      {},
      "Start image (img2img)",
      initImage,
      h("small", { class: "muted" }, "optional PNG or JPEG; its size, rounded to the model's multiple"),
    ),
    numberField(
      "strength",
      "Strength",
      { min: BOUNDS.strength[0], max: BOUNDS.strength[1], step: 0.05, placeholder: "0.8" },
      "with a start image: how much of it is noised away",
    ),
    h(
      "label",
      { class: "wide" },
      h("span", {}, "best_of: ", bestOfValue, " candidates per image, ranked by the reward model"),
      bestOf,
    ),
    h("label", { class: "check wide" }, scores, "Show every candidate's score"),
    h("div", { class: "row wide" }, submit, cancel),
  );
  append(root, h("h1", {}, "Playground"), form, status, error, results);

  void addVersions(model);

  /** The request body, or null after marking the fields that are out of range. */
  async function body(): Promise<GenerateRequest | null> {
    showError(error, null, form);
    const data = new FormData(form);
    let valid = true;
    const text = String(data.get("prompt") ?? "");
    if (!text.trim()) {
      fieldError(form, "prompt", "Write a prompt: it must not be empty.");
      valid = false;
    }
    const request: GenerateRequest = { prompt: text };
    if (negative.value.trim()) request.negative_prompt = negative.value;
    const numbers: ["steps" | "guidance_scale" | "seed" | "n" | "strength", number, number, boolean][] = [
      ["steps", BOUNDS.steps[0], BOUNDS.steps[1], true],
      ["guidance_scale", BOUNDS.guidance[0], BOUNDS.guidance[1], false],
      ["seed", 0, Number.MAX_SAFE_INTEGER, true],
      ["n", BOUNDS.n[0], BOUNDS.n[1], true],
      ["strength", BOUNDS.strength[0], BOUNDS.strength[1], false],
    ];
    for (const [name, low, high, integer] of numbers) {
      const value = checkedNumber(form, name, String(data.get(name) ?? "").trim(), low, high, integer);
      if (value === null) valid = false;
      else if (value !== undefined) request[name] = value;
    }
    // The select offers only the document's scheduler names.
    if (scheduler.value) request.scheduler = scheduler.value as NonNullable<GenerateRequest["scheduler"]>;
    if (model.value) request.model = model.value;
    const best = Number(bestOf.value);
    if (best > 1) request.best_of = best;
    if (scores.checked) request.return_candidate_scores = true;
    const file = initImage.files?.[0];
    if (file) {
      try {
        request.init_image = await fileBase64(file);
      } catch (err) {
        fieldError(form, "init_image", `Cannot read ${file.name}: ${String(err)}`);
        valid = false;
      }
    } else if (request.strength !== undefined) {
      fieldError(form, "strength", "Strength applies to a start image: choose one, or leave strength empty.");
      valid = false;
    }
    return valid ? request : null;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (controller) return; // one request at a time: a double click does not send twice
    controller = new AbortController();
    const request = await body();
    if (!request) {
      controller = null;
      return;
    }
    submit.disabled = true;
    cancel.hidden = false;
    const images = request.n ?? 1;
    const candidates = images * (request.best_of ?? 1);
    const indicator = progress(
      status,
      candidates > images ? `Generating ${candidates} candidates for ${images} image(s)…` : `Generating ${images} image(s)…`,
    );
    try {
      const response = await api<GenerateResponse>("POST", "/generate", request, { signal: controller.signal });
      render(response, request);
    } catch (err) {
      showError(error, err, form);
      if (err instanceof ApiError && err.param === "prompt") prompt.focus();
    } finally {
      indicator.stop();
      status.hidden = true;
      controller = null;
      submit.disabled = false;
      cancel.hidden = true;
    }
  });
  cancel.addEventListener("click", () => controller?.abort());

  function render(response: GenerateResponse, request: GenerateRequest): void {
    results.replaceChildren();
    const selection = response.selection;
    const summary = h(
      "p",
      { class: "summary" },
      `${response.images.length} image(s) from ${response.model}`,
      selection
        ? ` · reward model ${selection.reward_model}: ${selection.candidates} candidate(s) scored, ${selection.accepted} returned`
        : " · no reward model loaded",
      ` · ${formatNumber(response.timings.total_ms / 1000, 2)} s`,
    );
    append(results, summary);
    for (const warning of response.warnings) append(results, h("p", { class: "warning", role: "status" }, warning));
    const grid = h("div", { class: "image-grid" });
    response.images.forEach((image, rank) => {
      append(
        grid,
        h(
          "figure",
          { class: "image-card", "data-testid": "generated-image" },
          h("img", { src: pngSource(image.png_base64), alt: `${String(request.prompt)} (seed ${image.seed})` }),
          h(
            "figcaption",
            {},
            h("span", { class: "reward", "data-testid": "reward" }, image.reward == null ? "no reward" : `reward ${formatNumber(image.reward)}`),
            h("span", { class: "muted" }, selection && (selection.best_of ?? 1) > 1 ? `#${rank + 1} · seed ${image.seed}` : `seed ${image.seed}`),
          ),
        ),
      );
    });
    append(results, grid);
    const candidateScores = selection?.candidate_scores;
    if (candidateScores && candidateScores.length) {
      const kept = new Set(response.images.map((image) => image.reward));
      const low = Math.min(...candidateScores);
      const high = Math.max(...candidateScores);
      const list = h("ol", { class: "scores", "data-testid": "candidate-scores" });
      candidateScores.forEach((score, index) => {
        const width = high > low ? 8 + ((score - low) / (high - low)) * 92 : 100;
        append(
          list,
          h(
            "li",
            { class: kept.has(score) ? "kept" : "" },
            h("span", { class: "muted" }, `candidate ${index}`),
            h("span", { class: "bar", style: `width: ${width.toFixed(0)}%` }),
            h("span", {}, formatNumber(score), kept.has(score) ? " ✓ returned" : ""),
          ),
        );
      });
      append(results, h("h2", {}, "Every candidate's score (seed order)"), list);
    }
  }

  prompt.focus();
  return () => controller?.abort();
}
