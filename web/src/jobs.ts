// Jobs: create a fine-tune job from a form, follow its stages, loss and events live, and on success compare
// the base and the new version on the same prompts and seeds, with the job's evaluation.

import {
  api,
  type FeedbackFilter,
  type FineTuneEventPage,
  type FineTuneOut,
  type FineTunePage,
  type FineTuneRequest,
  type GateDecision,
  type GateSpec,
  type MetricGain,
  type Objective,
  type GenerateRequest,
  type GenerateResponse,
  type Hyperparameters,
  type PretrainData,
  type PretrainTarget,
  type PromptGenerator,
  type Relabel,
} from "./api";
import prompts from "./shapes-prompts.json";
import {
  addVersions,
  append,
  badge,
  checkedNumber,
  fieldError,
  formatDuration,
  formatNumber,
  formatTime,
  h,
  lineChart,
  pngSource,
  progressBar,
  showError,
} from "./ui";

/** The rating filter's choice "the base version's own images": resolved to the base's id in the request. */
const BASE_IMAGES = "(base)";
/** The server keeps raters' names to this many characters (POST /feedback). */
const MAX_RATER_CHARS = 128;
const POLL_MS = 1500;
const categories = prompts as Record<string, string[]>;

export function jobsPage(root: HTMLElement, args: string[]): () => void {
  return args[0] ? jobDetail(root, decodeURIComponent(args[0])) : jobList(root);
}

// --- The list and the form ---

/** The objectives of the model's samples' term (`hyperparameters.objective`), as the form names them. */
const OBJECTIVES: Record<Objective, string> = {
  rwr: "rwr: reward-weighted likelihood (the paper)",
  dpo: "dpo: Diffusion-DPO on pairs of one prompt's images",
  kto: "kto: Diffusion-KTO on single images, good or bad",
};

/** What the β term regresses on (`hyperparameters.pretrain_target`), as the form names it. */
const PRETRAIN_TARGETS: Record<PretrainTarget, string> = {
  data: "data: the noise added to the render (the paper)",
  base: "base: the frozen base model's prediction",
};

/** A field of the request (`FineTuneRequest`) the form sets: checked against the generated API types, so a
 * field the server renames or drops fails `npm run typecheck`. */
type FieldPath =
  | keyof FineTuneRequest
  | `hyperparameters.${keyof Hyperparameters}`
  | `prompts.${keyof PromptGenerator}`
  | `eval_prompts.${keyof PromptGenerator}`
  | `pretrain_data.${keyof PretrainData}`
  | `gate.${keyof GateSpec}`;

interface Field {
  name: string;
  label: string;
  hint: string;
  /** The server's default, shown as the placeholder; empty fields are left out of the request. */
  placeholder: string;
  min?: number;
  max?: number;
  step?: string;
  integer?: boolean;
  /** Where the value goes in the request, e.g. `hyperparameters.steps`. */
  path: FieldPath;
}

const FIELDS: Field[] = [
  { name: "steps", label: "Optimiser steps", hint: "", placeholder: "500", min: 1, max: 100000, integer: true, path: "hyperparameters.steps" },
  { name: "learning_rate", label: "Learning rate", hint: "AdamW, after a 5% warm-up", placeholder: "0.0001", min: 0, max: 1, step: "any", path: "hyperparameters.learning_rate" },
  { name: "batch_size", label: "Batch size", hint: "rows per step", placeholder: "32", min: 1, max: 4096, integer: true, path: "hyperparameters.batch_size" },
  { name: "beta", label: "β (pre-training weight)", hint: "0 is the ablation without it", placeholder: "1.0", min: 0, max: 100, step: "any", path: "hyperparameters.beta" },
  { name: "objective_beta", label: "Objective β (dpo, kto)", hint: "how close to the base the term holds the model", placeholder: "500 (dpo), 100 (kto)", min: 1, max: 1e6, step: "any", path: "hyperparameters.objective_beta" },
  { name: "lora_rank", label: "LoRA rank", hint: "0 trains every weight; above 0, an adapter on the attention projections", placeholder: "0", min: 0, max: 256, integer: true, path: "hyperparameters.lora_rank" },
  { name: "lora_alpha", label: "LoRA alpha", hint: "the update is scaled by alpha / rank", placeholder: "the rank", min: 0.001, max: 10000, step: "any", path: "hyperparameters.lora_alpha" },
  { name: "prompt_count", label: "Training prompts", hint: "drawn from the shapes world's train split", placeholder: "200", min: 1, max: 100000, integer: true, path: "prompts.count" },
  { name: "images_per_prompt", label: "Samples per prompt", hint: "scored by the reward model; 0 trains on ratings alone", placeholder: "8", min: 0, max: 1000, integer: true, path: "images_per_prompt" },
  { name: "eval_per_category", label: "Evaluation prompts per category", hint: "held-out split", placeholder: "all 282", min: 1, max: 1000, integer: true, path: "eval_prompts.per_category" },
  { name: "eval_images_per_prompt", label: "Evaluation images per prompt", hint: "", placeholder: "4", min: 1, max: 1000, integer: true, path: "eval_images_per_prompt" },
  { name: "pretrain_images", label: "Pre-training renders", hint: "the β term's data", placeholder: "8192", min: 1, max: 1000000, integer: true, path: "pretrain_data.images" },
  { name: "min_reward_gain", label: "Gate: min reward gain", hint: "the interval's lower end must be above it", placeholder: "server default", step: "any", min: -1, max: 1, path: "gate.min_reward_gain" },
  { name: "max_quality_drop", label: "Gate: max quality drop", hint: "the interval's lower end, 0.03 is 3 points", placeholder: "server default", step: "any", min: 0, max: 1, path: "gate.max_quality_drop" },
  { name: "confidence", label: "Gate: confidence", hint: "of the paired bootstrap intervals", placeholder: "server default", step: "any", min: 0.5, max: 0.999, path: "gate.confidence" },
  { name: "seed", label: "Seed", hint: "prompts, samples, trainer", placeholder: "0", min: 0, integer: true, path: "seed" },
];

/** Small enough to finish in about a minute on two CPU cores: for trying the loop, not for a better model. */
const QUICK: Record<string, string> = {
  steps: "3",
  batch_size: "4",
  prompt_count: "2",
  images_per_prompt: "2",
  eval_per_category: "1",
  eval_images_per_prompt: "2",
  pretrain_images: "8",
  min_reward_gain: "-1",
};

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split(".");
  let node = target;
  for (const part of parts.slice(0, -1)) {
    node[part] = (node[part] as Record<string, unknown>) ?? {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts[parts.length - 1]] = value;
}

function jobList(root: HTMLElement): () => void {
  let timer = 0;
  let stopped = false;
  let creating = false;
  const form = h("form", { class: "card form-grid", novalidate: true, "data-testid": "job-form" });
  const base = h("select", { name: "base_model" }, h("option", { value: "" }, "the active version"));
  const objective = h(
    "select",
    { name: "objective", "data-param": "hyperparameters.objective" },
    h("option", { value: "" }, "server default (rwr)"),
    ...Object.entries(OBJECTIVES).map(([value, label]) => h("option", { value }, label)),
  );
  const pretrainTarget = h(
    "select",
    { name: "pretrain_target", "data-param": "hyperparameters.pretrain_target" },
    h("option", { value: "" }, "server default (data)"),
    ...Object.entries(PRETRAIN_TARGETS).map(([value, label]) => h("option", { value }, label)),
  );
  const trainTextEncoder = h("input", { name: "train_text_encoder", type: "checkbox" });
  const checks = {
    use_feedback: h("input", { name: "use_feedback", type: "checkbox", checked: true }),
    retrain_reward_model: h("input", { name: "retrain_reward_model", type: "checkbox" }),
    activate_on_success: h("input", { name: "activate_on_success", type: "checkbox" }),
  } satisfies Partial<Record<keyof FineTuneRequest, HTMLInputElement>>;
  // Which stored ratings the job trains on: `feedback_filter`. On-policy rounds train on the base's own images.
  const feedbackModel = h(
    "select",
    { name: "feedback_model", "data-param": "feedback_filter.model" },
    h("option", { value: "" }, "any version"),
    h("option", { value: BASE_IMAGES }, "the base version"),
  );
  const feedbackRater = h("input", {
    name: "feedback_rater",
    "data-param": "feedback_filter.rater",
    type: "text",
    placeholder: "any rater",
    maxlength: MAX_RATER_CHARS,
  });
  // Hindsight relabelling (`relabel`): the words a reward-model relabel may swap, comma-separated.
  const relabelWords = h("input", {
    name: "relabel_words",
    "data-param": "relabel.words",
    type: "text",
    placeholder: "off (e.g. one, two, three, four)",
  });
  // The pre-training filter (`pretrain_data.filter`): the words whose caption variants the reward model compares.
  const pretrainWords = h("input", {
    name: "pretrain_filter_words",
    "data-param": "pretrain_data.filter.words",
    type: "text",
    placeholder: "off (e.g. one, two, three, four)",
  });
  let activeVersion: string | null = null;
  const submit = h("button", { type: "submit" }, "Create job");
  const quick = h("button", { type: "button", class: "secondary" }, "Quick trial values");
  const defaults = h("button", { type: "button", class: "secondary" }, "Server defaults");
  const preview = h("pre", { class: "preview", "data-testid": "job-preview" });
  const error = h("div", { class: "error", hidden: true });
  append(
    form,
    h("label", {}, "Base version", base),
    h("label", {}, "Objective", objective),
    h("label", {}, "β term's target", pretrainTarget),
  );
  for (const field of FIELDS) {
    append(
      form,
      h(
        "label",
        {},
        field.label,
        h("input", {
          name: field.name,
          "data-param": field.path,
          type: "number",
          placeholder: field.placeholder,
          min: field.min,
          max: field.max,
          step: field.step ?? (field.integer ? "1" : "any"),
        }),
        field.hint ? h("small", { class: "muted" }, field.hint) : null,
      ),
    );
  }
  append(
    form,
    h("label", { class: "check" }, trainTextEncoder, "Train the text encoder too (with LoRA: its adapters)"),
    h("label", { class: "check" }, checks.use_feedback, "Train on the stored ratings"),
    h("label", {}, "Ratings of images from", feedbackModel, h("small", { class: "muted" }, "the version that generated them")),
    h("label", {}, "Ratings by", feedbackRater, h("small", { class: "muted" }, "one rater's name, or any")),
    h("label", { class: "check" }, checks.retrain_reward_model, "Retrain the reward model on them first"),
    h(
      "label",
      {},
      "Relabel among words",
      relabelWords,
      h("small", { class: "muted" }, "an image may be trained on under the prompt with one of these words swapped that the reward model prefers"),
    ),
    h(
      "label",
      {},
      "Keep pre-training images by words",
      pretrainWords,
      h("small", { class: "muted" }, "only those whose caption's word the reward model prefers to each other word, the same share of each word"),
    ),
    h("label", { class: "check" }, checks.activate_on_success, "Activate the new version if it passes the gate"),
    h("div", { class: "row wide" }, submit, quick, defaults),
    h("details", { class: "wide" }, h("summary", {}, "The request this form sends"), preview),
  );
  const table = h("div", { "data-testid": "job-list" });
  append(
    root,
    h("h1", {}, "Fine-tune jobs"),
    h(
      "p",
      { class: "muted" },
      "Fine-tuning on human feedback (Lee et al., 2023): the base version's samples scored by the reward model and your ratings, trained with reward-weighted likelihood (the paper), Diffusion-DPO or Diffusion-KTO, with every weight or a LoRA adapter, and half of each batch from pre-training data. Empty fields take the server's defaults.",
    ),
    form,
    error,
    h("h2", {}, "Jobs"),
    table,
  );

  function request(): FineTuneRequest | null {
    showError(error, null, form);
    const data = new FormData(form);
    const fields: Record<string, unknown> = {};
    let valid = true;
    for (const field of FIELDS) {
      const raw = String(data.get(field.name) ?? "").trim();
      const low = field.min ?? -Infinity;
      const high = field.max ?? Number.MAX_SAFE_INTEGER;
      const value = checkedNumber(form, field.path, raw, low, high, field.integer ?? false);
      if (value === null) valid = false;
      else if (value !== undefined) setPath(fields, field.path, value);
    }
    // Every path in FIELDS is one of FineTuneRequest's (FieldPath); the generator and kind are added here.
    const body = fields as FineTuneRequest;
    if (body.prompts) (body.prompts as PromptGenerator).generator = "shapes_world";
    if (body.eval_prompts) (body.eval_prompts as PromptGenerator).generator = "shapes_world";
    if (body.pretrain_data) body.pretrain_data.kind = "shapes_world";
    if (base.value) body.base_model = base.value;
    if (objective.value || pretrainTarget.value || trainTextEncoder.checked) {
      const hyper: Hyperparameters = body.hyperparameters ?? {};
      if (objective.value) hyper.objective = objective.value as Objective;
      if (pretrainTarget.value) hyper.pretrain_target = pretrainTarget.value as PretrainTarget;
      if (trainTextEncoder.checked) hyper.train_text_encoder = true;
      body.hyperparameters = hyper;
    }
    body.use_feedback = checks.use_feedback.checked;
    if (body.use_feedback) {
      const filter: FeedbackFilter = {};
      const model = feedbackModel.value === BASE_IMAGES ? String(data.get("base_model") || activeVersion || "") : feedbackModel.value;
      if (feedbackModel.value === BASE_IMAGES && !model) {
        fieldError(form, "feedback_filter.model", "The active version is not known yet: choose the base version above.");
        valid = false;
      } else if (model) filter.model = model;
      const rater = feedbackRater.value.trim();
      if (rater.length > MAX_RATER_CHARS) {
        fieldError(form, "feedback_filter.rater", `At most ${MAX_RATER_CHARS} characters. Given: ${rater.length}`);
        valid = false;
      } else if (rater) filter.rater = rater;
      if (Object.keys(filter).length > 0) body.feedback_filter = filter;
    }
    if (checks.retrain_reward_model.checked) body.retrain_reward_model = true;
    // A list of words, comma-separated: none leaves the option out, one is refused (it needs a second to compare).
    const wordList = (input: HTMLInputElement, param: string, what: string): string[] | null => {
      const words = input.value
        .split(",")
        .map((word) => word.trim())
        .filter((word) => word.length > 0);
      if (words.length !== 1) return words.length > 1 ? words : null;
      fieldError(form, param, `Name at least two words to ${what}, separated by commas.`);
      valid = false;
      return null;
    };
    const words = wordList(relabelWords, "relabel.words", "swap");
    if (words) body.relabel = { words };
    const kept = wordList(pretrainWords, "pretrain_data.filter.words", "compare");
    if (kept) {
      // The filter applies to the pre-training renders, with any count the renders field set.
      body.pretrain_data = body.pretrain_data ?? ({ kind: "shapes_world" } as PretrainData);
      body.pretrain_data.filter = { words: kept };
    }
    if (checks.activate_on_success.checked) body.activate_on_success = true;
    return valid ? body : null;
  }

  function showPreview(): void {
    const body = request();
    preview.textContent = body ? `POST /fine-tunes\n${JSON.stringify(body, null, 2)}` : "(fix the marked fields)";
  }

  // The server refuses β without dpo or kto and alpha without a rank: such fields are disabled, and left out.
  const syncMethod = (): void => {
    const beta = form.querySelector<HTMLInputElement>('[name="objective_beta"]');
    const alpha = form.querySelector<HTMLInputElement>('[name="lora_alpha"]');
    const rank = form.querySelector<HTMLInputElement>('[name="lora_rank"]');
    if (beta) beta.disabled = objective.value !== "dpo" && objective.value !== "kto";
    if (alpha) alpha.disabled = !(Number(rank?.value ?? 0) > 0);
  };
  form.addEventListener("input", syncMethod);
  syncMethod();
  form.addEventListener("input", showPreview);
  // The filter chooses among the stored ratings: without them it has nothing to choose from.
  const syncFeedback = (): void => {
    feedbackModel.disabled = !checks.use_feedback.checked;
    feedbackRater.disabled = !checks.use_feedback.checked;
  };
  checks.use_feedback.addEventListener("change", syncFeedback);
  quick.addEventListener("click", () => {
    for (const [name, value] of Object.entries(QUICK)) {
      const input = form.querySelector<HTMLInputElement>(`[name="${name}"]`);
      if (input) input.value = value;
    }
    showPreview();
  });
  defaults.addEventListener("click", () => {
    form.querySelectorAll<HTMLInputElement>('input[type="number"]').forEach((input) => (input.value = ""));
    objective.value = "";
    pretrainTarget.value = "";
    syncMethod();
    showPreview();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (creating) return;
    const body = request();
    if (!body) return;
    creating = true;
    submit.disabled = true;
    try {
      const job = await api<FineTuneOut>("POST", "/fine-tunes", body);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      showError(error, err, form);
    } finally {
      creating = false;
      submit.disabled = false;
    }
  });

  void addVersions(base, feedbackModel).then((active) => {
    activeVersion = active;
    // Only "the base version" reads it. Refreshing the preview clears the page's errors, such as the job
    // list's 403, so it is left alone otherwise.
    if (feedbackModel.value === BASE_IMAGES) showPreview();
  });

  async function refresh(): Promise<void> {
    try {
      const page = await api<FineTunePage>("GET", "/fine-tunes?limit=50");
      if (page.data.length === 0) {
        table.replaceChildren(h("p", { class: "muted" }, "No jobs yet."));
      } else {
        const rows = page.data.map((job) =>
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
            h("td", {}, badge(job.status)),
            h("td", {}, job.stage ?? "–"),
            h("td", {}, progressBar(job.progress)),
            h("td", {}, job.base_model),
            h("td", {}, job.result_model ?? "–"),
            h("td", {}, formatTime(job.created_at)),
          ),
        );
        table.replaceChildren(
          h(
            "table",
            {},
            h("thead", {}, h("tr", {}, ...["Job", "Status", "Stage", "Progress", "Base", "Result", "Created"].map((t) => h("th", {}, t)))),
            h("tbody", {}, ...rows),
          ),
        );
      }
      showError(error, null);
    } catch (err) {
      table.replaceChildren();
      showError(error, err);
    }
    if (!stopped) timer = window.setTimeout(refresh, POLL_MS * 2);
  }

  showPreview();
  void refresh();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}

// --- One job ---

function jobDetail(root: HTMLElement, id: string): () => void {
  let timer = 0;
  let stopped = false;
  let after: string | null = null;
  let compared = false;
  const losses: [number, number][] = [];
  const header = h("div", { class: "card" });
  const stages = h("ol", { class: "stages", "data-testid": "job-stages" });
  const chart = h("div", { class: "card", hidden: true });
  const outcome = h("div", { "data-testid": "job-outcome" });
  const log = h("ol", { class: "events", "data-testid": "job-events" });
  const error = h("div", { class: "error", hidden: true });
  append(
    root,
    h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")),
    h("h1", {}, `Job ${id}`),
    error,
    header,
    stages,
    chart,
    outcome,
    h("details", { open: true }, h("summary", {}, "Events"), log),
  );

  function drawHeader(job: FineTuneOut): void {
    const cancel = h("button", { type: "button", class: "secondary" }, "Cancel job");
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        await api("POST", `/fine-tunes/${encodeURIComponent(id)}/cancel`);
      } catch (err) {
        showError(error, err);
        cancel.disabled = false;
      }
    });
    const running = job.started_at ? ((job.finished_at ?? Date.now()) - job.started_at) / 1000 : 0;
    header.replaceChildren();
    append(
      header,
      h(
        "p",
        { class: "row" },
        h("span", { "data-testid": "job-status" }, badge(job.status)),
        h("span", {}, `base ${job.base_model}`),
        h("span", { "data-testid": "job-method" }, method(job.spec)),
        job.result_model ? h("span", {}, "→ ", h("a", { href: "#/models" }, job.result_model)) : null,
        running ? h("span", { class: "muted" }, formatDuration(running)) : null,
        job.status === "queued" || job.status === "running" ? cancel : null,
      ),
      progressBar(job.progress, `${Math.round(job.progress * 100)}%${job.stage ? ` · ${job.stage}` : ""}`),
      job.error ? h("p", { class: "error", role: "alert" }, job.error) : null,
    );
    // The server's list of stages (`stages`), so that the console never keeps a copy that drifts from it.
    const current = job.stage ? job.stages.indexOf(job.stage) : -1;
    stages.replaceChildren(
      ...job.stages.map((stage, index) => {
        let state = "pending";
        if (index < current || job.status === "succeeded") state = "done";
        else if (index === current) state = job.status === "running" ? "running" : job.status;
        return h("li", { class: `stage stage-${state}`, title: state, "data-stage": stage }, stage);
      }),
    );
  }

  function drawLoss(): void {
    if (losses.length === 0) return;
    chart.hidden = false;
    const last = losses[losses.length - 1];
    chart.replaceChildren(
      h("h2", {}, "Trainer loss"),
      h("p", { class: "muted", "data-testid": "job-loss" }, `step ${last[0]}: ${formatNumber(last[1], 5)}`),
      lineChart(losses, "the trainer's loss by step"),
    );
  }

  async function pollEvents(): Promise<void> {
    for (;;) {
      const query = `limit=500${after ? `&after=${encodeURIComponent(after)}` : ""}`;
      const page = await api<FineTuneEventPage>("GET", `/fine-tunes/${encodeURIComponent(id)}/events?${query}`);
      for (const event of page.data) {
        after = event.id;
        const data = event.data ?? {};
        if (typeof data.loss === "number" && typeof data.step === "number") losses.push([data.step, data.loss]);
        log.append(
          h(
            "li",
            { class: `event event-${event.level}` },
            h("span", { class: "muted" }, new Date(event.created_at).toLocaleTimeString()),
            " ",
            badge(event.kind, "kind"),
            " ",
            event.message,
          ),
        );
      }
      if (!page.has_more) break;
    }
    drawLoss();
  }

  async function refresh(): Promise<void> {
    let final = false;
    try {
      const job = await api<FineTuneOut>("GET", `/fine-tunes/${encodeURIComponent(id)}`);
      drawHeader(job);
      await pollEvents();
      final = ["succeeded", "failed", "cancelled"].includes(job.status);
      if (final && job.metrics && !compared) {
        compared = true;
        drawOutcome(outcome, job);
      }
      showError(error, null);
    } catch (err) {
      showError(error, err);
    }
    if (!final && !stopped) timer = window.setTimeout(refresh, POLL_MS);
  }

  void refresh();
  // A refresh still in flight when the user leaves schedules nothing more.
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}

/** The evaluation's figures, base against candidate, and the gate. */
function drawOutcome(box: HTMLElement, job: FineTuneOut): void {
  const metrics = job.metrics ?? {};
  const evaluation = metrics.evaluation as { base?: Record<string, unknown>; candidate?: Record<string, unknown> } | undefined;
  box.replaceChildren();
  if (evaluation?.base && evaluation.candidate) {
    const keys = Object.keys(evaluation.base).filter((key) => typeof evaluation.base?.[key] === "number");
    const rows = keys.map((key) => {
      const before = evaluation.base?.[key] as number;
      const after = evaluation.candidate?.[key] as number;
      const change = typeof after === "number" ? after - before : NaN;
      return h(
        "tr",
        {},
        h("td", {}, key.replaceAll("_", " ")),
        h("td", {}, formatNumber(before)),
        h("td", {}, formatNumber(after)),
        h("td", { class: change > 0 ? "up" : change < 0 ? "down" : "" }, Number.isFinite(change) ? `${change > 0 ? "+" : ""}${formatNumber(change)}` : "–"),
      );
    });
    append(
      box,
      h("h2", {}, "Evaluation on held-out prompts"),
      h(
        "table",
        { "data-testid": "job-evaluation" },
        h("thead", {}, h("tr", {}, h("th", {}, "Figure"), h("th", {}, job.base_model), h("th", {}, job.result_model ?? "candidate"), h("th", {}, "Change"))),
        h("tbody", {}, ...rows),
      ),
    );
  }
  const gate = metrics.gate as GateDecision | undefined;
  if (gate) append(box, gateTable(gate));
  if (job.status === "succeeded" && job.result_model) append(box, compare(job.base_model, job.result_model, job.spec));
}

/** The objective and what it trains, from the stored spec: "rwr, full weights" or "kto, LoRA rank 8 (alpha 8)",
 * ", β term anchored to the base" when the pre-training term's target is the base's prediction, and the relabelling's
 * words when the job relabels, and the pre-training filter's words when it filters. */
function method(spec: Record<string, unknown>): string {
  const hyper = (spec.hyperparameters ?? {}) as Hyperparameters;
  const objective = hyper.objective ?? "rwr";
  const rank = hyper.lora_rank ?? 0;
  const weights = rank > 0 ? `LoRA rank ${rank} (alpha ${hyper.lora_alpha ?? rank})` : "full weights";
  const anchored = hyper.pretrain_target === "base" ? ", β term anchored to the base" : "";
  const relabel = spec.relabel as Relabel | null | undefined;
  const relabelled = relabel ? `, relabelled among ${relabel.words.join("/")} (threshold ${relabel.threshold})` : "";
  const filter = (spec.pretrain_data as PretrainData | null | undefined)?.filter;
  const filtered = filter ? `, pre-training images kept by ${filter.words.join("/")}${filter.balance === false ? "" : ", balanced"}` : "";
  return `${objective}, ${weights}${hyper.train_text_encoder ? ", text encoder too" : ""}${anchored}${relabelled}${filtered}`;
}

/** A metric's figure: points for shares, four decimals for the reward and diversity. */
function figure(metric: string, value: number | null | undefined, signed = false): string {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  const sign = signed && value > 0 ? "+" : "";
  return metric === "reward" || metric === "diversity" ? `${sign}${value.toFixed(4)}` : `${sign}${(value * 100).toFixed(1)}`;
}

/** The gate's decision: each metric's change with its paired bootstrap interval, the rule, and why. */
function gateTable(gate: GateDecision): HTMLElement {
  const percent = Math.round(gate.rule.confidence * 100);
  const verdict = (row: MetricGain) =>
    row.passed === true ? badge("ok", "passed") : row.passed === false ? badge("fails", "failed") : h("span", { class: "muted" }, row.gain === null ? "not measured" : "shown");
  const rule = (row: MetricGain) =>
    row.bound === null || row.bound === undefined ? "" : row.role === "gain" ? `low > ${figure(row.metric, row.bound, true)}` : `low ≥ ${figure(row.metric, row.bound, true)}`;
  const rows = gate.table.map((row) =>
    h(
      "tr",
      { "data-metric": row.metric },
      h("td", {}, row.metric),
      h("td", {}, figure(row.metric, row.base)),
      h("td", {}, figure(row.metric, row.candidate)),
      h("td", { class: (row.gain ?? 0) > 0 ? "up" : (row.gain ?? 0) < 0 ? "down" : "" }, figure(row.metric, row.gain, true)),
      h("td", {}, row.low === null ? "–" : `${figure(row.metric, row.low, true)} to ${figure(row.metric, row.high, true)}`),
      h("td", {}, rule(row)),
      h("td", {}, verdict(row)),
    ),
  );
  return h(
    "div",
    { "data-testid": "job-gate" },
    h("h2", {}, "Gate"),
    h(
      "p",
      {},
      badge(gate.passed ? "passed" : "refused", gate.passed ? "passed" : "failed"),
      ` on ${gate.prompts} prompts, base and candidate with the same seeds; ${percent}% paired bootstrap intervals over prompts (${gate.rule.resamples} resamples)`,
      gate.base_cached ? h("span", { class: "muted" }, " · the base's evaluation came from the cache") : null,
    ),
    h(
      "table",
      { "data-testid": "job-gate-table" },
      h(
        "thead",
        {},
        h("tr", {}, ...["Metric", "Base", "Candidate", "Change", `${percent}% interval`, "Rule", "Verdict"].map((title) => h("th", {}, title))),
      ),
      h("tbody", {}, ...rows),
    ),
    h("p", { class: "muted" }, "Shares in points (0-100); reward and diversity in their own units."),
    gate.reasons.length ? h("ul", { "data-testid": "job-gate-reasons" }, ...gate.reasons.map((reason) => h("li", {}, reason))) : null,
  );
}

/** Base and new version side by side: the same prompts and the same seeds through POST /generate. */
function compare(baseModel: string, newModel: string, spec: Record<string, unknown>): HTMLElement {
  const listed = Array.isArray(spec.eval_prompts) ? (spec.eval_prompts as string[]) : [];
  const defaults = listed.length
    ? listed.slice(0, 4)
    : Object.values(categories).map((pool) => pool[Math.floor(pool.length / 2)]);
  const prompts = h("textarea", { name: "compare_prompts", rows: 4 }, defaults.join("\n"));
  const seed = h("input", { name: "compare_seed", type: "number", min: 0, value: 1000 });
  const run = h("button", { type: "button" }, "Compare");
  const error = h("div", { class: "error", hidden: true });
  const grid = h("div", { class: "compare", "data-testid": "job-compare" });
  const box = h(
    "section",
    { class: "card" },
    h("h2", {}, "Base and new version, same prompts and seeds"),
    h("div", { class: "form-grid" }, h("label", { class: "wide" }, "Prompts, one per line", prompts), h("label", {}, "Seed", seed), h("div", { class: "row" }, run)),
    error,
    grid,
  );
  let busy = false;
  run.addEventListener("click", async () => {
    if (busy) return;
    busy = true;
    run.disabled = true;
    showError(error, null);
    const lines = prompts.value.split("\n").map((line) => line.trim()).filter(Boolean).slice(0, 8);
    grid.replaceChildren(h("div", { class: "compare-head" }, "Prompt"), h("div", { class: "compare-head" }, baseModel), h("div", { class: "compare-head" }, newModel));
    try {
      for (const prompt of lines) {
        const request: GenerateRequest = { prompt, n: 2, seed: Number(seed.value) || 0 };
        const [before, after] = await Promise.all([
          api<GenerateResponse>("POST", "/generate", { ...request, model: baseModel }),
          api<GenerateResponse>("POST", "/generate", { ...request, model: newModel }),
        ]);
        const cell = (response: GenerateResponse) =>
          h(
            "div",
            { class: "compare-cell" },
            ...response.images.map((image) =>
              h(
                "figure",
                { class: "image-card small" },
                h("img", { src: pngSource(image.png_base64), alt: `${prompt} (${response.model}, seed ${image.seed})` }),
                h("figcaption", {}, image.reward == null ? `seed ${image.seed}` : `reward ${formatNumber(image.reward)}`),
              ),
            ),
          );
        grid.append(h("div", { class: "compare-prompt" }, prompt), cell(before), cell(after));
      }
    } catch (err) {
      showError(error, err);
    } finally {
      busy = false;
      run.disabled = false;
    }
  });
  queueMicrotask(() => run.click());
  return box;
}
