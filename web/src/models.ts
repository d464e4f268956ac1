// Models: every version with its lineage and evaluation; activating one needs an admin key.

import { api, type ModelList, type ModelOut } from "./api";
import { append, badge, formatNumber, formatTime, h, showError } from "./ui";

/** The figures of a version's evaluation worth a column: mean reward and the gate, base against it. */
function summary(model: ModelOut): HTMLElement {
  const metrics = model.metrics ?? {};
  const evaluation = metrics.evaluation as { base?: Record<string, unknown>; candidate?: Record<string, unknown> } | undefined;
  const gate = metrics.gate as { passed?: boolean } | undefined;
  if (!evaluation?.base || !evaluation.candidate) return h("span", { class: "muted" }, "–");
  const details = h("details", {});
  const rows = Object.keys(evaluation.candidate)
    .filter((key) => typeof evaluation.candidate?.[key] === "number")
    .map((key) =>
      h("tr", {}, h("td", {}, key.replaceAll("_", " ")), h("td", {}, formatNumber(evaluation.base?.[key])), h("td", {}, formatNumber(evaluation.candidate?.[key]))),
    );
  append(
    details,
    h(
      "summary",
      {},
      `mean reward ${formatNumber(evaluation.base.mean_reward)} → ${formatNumber(evaluation.candidate.mean_reward)} `,
      gate ? badge(gate.passed ? "gate passed" : "gate failed", gate.passed ? "passed" : "failed") : null,
    ),
    h("table", { class: "compact" }, h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "parent"), h("th", {}, "this"))), h("tbody", {}, ...rows)),
  );
  return details;
}

export function modelsPage(root: HTMLElement): () => void {
  const error = h("div", { class: "error", hidden: true });
  const note = h("p", { class: "notice", hidden: true, role: "status" });
  const table = h("div", { "data-testid": "model-list" });
  append(
    root,
    h("h1", {}, "Models"),
    h("p", { class: "muted" }, "Every version this server can serve, newest first. Activating one loads it (its files checked against their SHA-256) before the swap; requests already running finish on the old one."),
    note,
    error,
    table,
  );
  let busy = false;

  async function activate(model: ModelOut, button: HTMLButtonElement): Promise<void> {
    if (busy) return;
    busy = true;
    button.disabled = true;
    button.textContent = "Activating…";
    showError(error, null);
    try {
      await api("POST", `/models/${encodeURIComponent(model.id)}/activate`);
      note.hidden = false;
      note.textContent = `${model.id} is now the active version.`;
      await refresh();
    } catch (err) {
      showError(error, err);
      button.disabled = false;
      button.textContent = "Activate";
    } finally {
      busy = false;
    }
  }

  async function refresh(): Promise<void> {
    try {
      const list = await api<ModelList>("GET", "/models");
      const rows = [...list.data]
        .sort((a, b) => b.created_at - a.created_at)
        .map((model) => {
          let action: HTMLElement | string = "";
          if (model.kind === "diffusion" && !model.active) {
            const button = h("button", { type: "button", class: "small", "data-model": model.id }, "Activate");
            button.addEventListener("click", () => void activate(model, button));
            action = button;
          }
          return h(
            "tr",
            { "data-testid": "model-row", "data-model": model.id },
            h("td", {}, h("strong", {}, model.id), model.active ? badge("active") : null, model.loaded ? badge("loaded", "kind") : null),
            h("td", {}, model.kind),
            h("td", {}, model.source, model.job_id ? h("div", {}, h("a", { href: `#/jobs/${encodeURIComponent(model.job_id)}` }, model.job_id)) : null),
            h("td", { class: "lineage" }, model.lineage.length ? [model.id, ...model.lineage].join(" ← ") : "–"),
            h("td", {}, summary(model)),
            h("td", {}, String(model.checksummed_files)),
            h("td", {}, formatTime(model.created_at)),
            h("td", {}, action),
          );
        });
      table.replaceChildren(
        h(
          "table",
          {},
          h("thead", {}, h("tr", {}, ...["Version", "Kind", "Source", "Lineage", "Evaluation", "Checksummed files", "Created", ""].map((t) => h("th", {}, t)))),
          h("tbody", {}, ...rows),
        ),
      );
    } catch (err) {
      showError(error, err);
    }
  }

  void refresh();
  return () => {};
}
