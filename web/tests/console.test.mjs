// Browser tests of the web console: headless Debian chromium, driven by playwright-core, against a real
// server started here. The flows of issue #8: generate in the playground, rate three images (double clicks
// and undo included), create a small fine-tune job and watch it finish, compare, and activate the version.
// Screenshots of every page go to web/test-results/; UPDATE_DOCS=1 also writes them to docs/console/.

import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { chromium } from "playwright-core";
import { ROOT, startServer } from "./server.mjs";

const ARTEFACTS = path.join(ROOT, "web", "test-results");
const DOCS = path.join(ROOT, "docs", "console");
mkdirSync(ARTEFACTS, { recursive: true });

async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    // Chromium's sandbox cannot start as root (CI containers run as root).
    args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
  });
}

async function screenshot(page, name) {
  const file = path.join(ARTEFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  if (process.env.UPDATE_DOCS === "1") {
    mkdirSync(DOCS, { recursive: true });
    copyFileSync(file, path.join(DOCS, `${name}.png`));
  }
}

async function json(server, route) {
  const response = await fetch(`${server.url}${route}`);
  const text = await response.text();
  assert.equal(response.status, 200, `${route}: ${text}`);
  return JSON.parse(text);
}

/** Fails the test on any script error or failed console call in the page. */
function watchErrors(page) {
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => {
    // The API's 4xx answers are logged by the browser as failed loads; the tests cause those on purpose.
    if (message.type() === "error" && !message.text().includes("Failed to load resource")) errors.push(message.text());
  });
  return errors;
}

describe("the console in open mode", () => {
  let server;
  let browser;
  let page;
  let errors;

  before(async () => {
    server = await startServer({ args: ["--max-steps", "60", "--trainer-threads", "2"] });
    browser = await launch();
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    errors = watchErrors(page);
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("the page and its assets come from the binary", async () => {
    const response = await fetch(`${server.url}/`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-security-policy"), /default-src 'self'/);
    const html = await response.text();
    const script = html.match(/src="(\/assets\/[^"]+\.js)"/)[1];
    const asset = await fetch(`${server.url}${script}`);
    assert.equal(asset.status, 200);
    assert.match(asset.headers.get("content-type"), /javascript/);
    assert.match(asset.headers.get("cache-control"), /immutable/);
  });

  test("playground: inline messages for bad input, then images with rewards and every candidate's score", async () => {
    await page.goto(`${server.url}/#/playground`);
    await page.waitForSelector(".health.ok");
    const submit = page.locator("main form button[type=submit]");

    // An empty prompt never leaves the page.
    await submit.click();
    await page.waitForSelector(".field-error");
    assert.match(await page.locator(".field-error").first().innerText(), /must not be empty/);

    // An over-long prompt: the server's 422 (--max-prompt-bytes, 4096 by default) appears under the field.
    await page.fill("textarea[name=prompt]", "a red circle ".repeat(400));
    await submit.click();
    await page.waitForSelector("textarea[name=prompt].invalid");
    assert.match(await page.locator(".field-error").first().innerText(), /4096/);

    // Out of the form's range: a message under the field.
    await page.fill("textarea[name=prompt]", "two red circles on a yellow background");
    await page.fill("input[name=guidance_scale]", "99");
    await submit.click();
    assert.match(await page.locator(".field-error").first().innerText(), /from 0 to 30/);
    await page.fill("input[name=guidance_scale]", "");

    // Within the form's range but over this server's --max-steps 60: the server's 422 names the field.
    await page.fill("input[name=steps]", "100");
    await submit.click();
    await page.waitForSelector(".error:not([hidden])");
    assert.match(await page.locator(".error").first().innerText(), /steps/);
    assert.match(await page.locator(".error").first().innerText(), /60/);
    assert.equal(await page.locator("input[name=steps].invalid").count(), 1);
    await screenshot(page, "playground-error");
    await page.fill("input[name=steps]", "");

    // Two images, best of 4, with every candidate's score.
    await page.fill("input[name=n]", "2");
    await page.fill("input[name=seed]", "7");
    await page.locator("input[name=best_of]").fill("4");
    await page.check("input[name=return_candidate_scores]");
    await submit.click();
    await page.waitForSelector("[role=progressbar]"); // the progress indicator while the server works
    await page.waitForSelector("[data-testid=generated-image]", { timeout: 120_000 });
    assert.equal(await page.locator("[data-testid=generated-image]").count(), 2);
    const rewards = await page.locator("[data-testid=reward]").allInnerTexts();
    assert.ok(rewards.every((text) => /^reward -?\d+\.\d+$/.test(text)), rewards.join(", "));
    assert.equal(await page.locator("[data-testid=candidate-scores] li").count(), 8);
    assert.equal(await page.locator("[data-testid=candidate-scores] li.kept").count(), 2);
    assert.equal(await page.locator(".error:not([hidden])").count(), 0);
    await screenshot(page, "playground");
  });

  test("playground: img2img from a start image, and the start image's errors under its field", async () => {
    // A 64×64 start image, made by the server itself.
    const made = await fetch(`${server.url}/generate`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "a blue square", steps: 4, seed: 1 }),
    });
    assert.equal(made.status, 200);
    const start = path.join(ARTEFACTS, "start-image.png");
    writeFileSync(start, Buffer.from((await made.json()).images[0].png_base64, "base64"));
    const notImage = path.join(ARTEFACTS, "not-an-image.png");
    writeFileSync(notImage, "this is text, not a PNG");

    // A fresh form: the previous test left its fields filled.
    await page.goto(`${server.url}/#/playground`);
    await page.reload();
    await page.waitForSelector(".health.ok");
    const submit = page.locator("main form button[type=submit]");
    await page.fill("textarea[name=prompt]", "a red circle on a blue background");
    await page.fill("input[name=steps]", "10");

    // Strength without a start image never leaves the page.
    await page.fill("input[name=strength]", "0.6");
    await submit.click();
    assert.match(await page.locator(".field-error").first().innerText(), /start image/);

    // A file that is not an image: the server's 422 names init_image, shown under the file field.
    await page.setInputFiles("input[name=init_image]", notImage);
    await submit.click();
    await page.waitForSelector("input[name=init_image].invalid");
    assert.match(await page.locator(".error").first().innerText(), /init_image/);

    // The start image: one image back, at the start image's size.
    await page.setInputFiles("input[name=init_image]", start);
    await submit.click();
    await page.waitForSelector("[data-testid=generated-image]", { timeout: 120_000 });
    assert.equal(await page.locator("[data-testid=generated-image]").count(), 1);
    const size = await page
      .locator("[data-testid=generated-image] img")
      .evaluate((image) => [image.naturalWidth, image.naturalHeight]);
    assert.deepEqual(size, [64, 64]);
    assert.equal(await page.locator(".error:not([hidden])").count(), 0);
  });

  test("rate: three images labelled by keyboard and click; a double click stores one row; undo deletes", async () => {
    await page.goto(`${server.url}/#/rate`);
    await page.fill("input[name=rater]", "browser-test");
    await page.locator("input[name=rater]").dispatchEvent("change");
    await page.waitForSelector("[data-testid=rate-card]", { timeout: 60_000 });
    assert.equal(await page.locator("[data-testid=rate-card]").count(), 3);
    const before = (await json(server, "/feedback?limit=1000")).data.length;

    // Image 1 good by keyboard (the first image is picked), image 2 bad by keyboard.
    await page.locator("main h1").click();
    await page.keyboard.press("g");
    await page.waitForSelector("[data-testid=rate-card][data-label=good]");
    await page.keyboard.press("b");
    await page.waitForSelector("[data-testid=rate-card][data-label=bad]");

    // Image 3: a double click on "Skip" sends one rating.
    await page.locator("[data-testid=rate-card]").nth(2).locator("button.label-skip").dblclick();
    await page.waitForSelector("[data-testid=rate-card][data-label=skip]");
    await page.waitForFunction(() => document.querySelector("[data-testid=rating-count]")?.textContent?.startsWith("3 rated"));
    let stored = (await json(server, "/feedback?limit=1000")).data.slice(before);
    assert.deepEqual(
      stored.map((row) => row.label),
      ["good", "bad", "skip"],
      "one row per label, none doubled by the double click",
    );
    assert.ok(stored.every((row) => row.rater === "browser-test"));
    assert.equal(new Set(stored.map((row) => row.image_id)).size, 3);
    await screenshot(page, "rate");

    // Undo takes back the last label (the skip), on the server too; the image can be labelled again.
    await page.keyboard.press("u");
    await page.waitForFunction(() => document.querySelector("[data-testid=rating-count]")?.textContent?.startsWith("2 rated"));
    stored = (await json(server, "/feedback?limit=1000")).data.slice(before);
    assert.deepEqual(stored.map((row) => row.label), ["good", "bad"]);
    await page.keyboard.press("g");
    await page.waitForFunction(() => document.querySelector("[data-testid=rating-count]")?.textContent?.startsWith("3 rated"));
    stored = (await json(server, "/feedback?limit=1000")).data.slice(before);
    assert.deepEqual(stored.map((row) => row.label), ["good", "bad", "good"]);

    // The next prompt brings three new images.
    const firstPrompt = await page.locator("[data-testid=rating-prompt]").textContent();
    await page.keyboard.press("n");
    await page.waitForFunction(
      (first) => document.querySelector("[data-testid=rating-prompt]")?.textContent !== first,
      firstPrompt,
      { timeout: 60_000 },
    );
    assert.equal(await page.locator("[data-testid=rate-card][data-state=open]").count(), 3);
  });

  let newVersion;
  test("jobs: a small fine-tune job from the form, followed to the end, compared with its base", async () => {
    await page.goto(`${server.url}/#/jobs`);
    await page.getByRole("button", { name: "Quick trial values" }).click();
    assert.match(await page.locator("[data-testid=job-preview]").textContent(), /"steps": 3/);
    // An out-of-range field is marked, and nothing is sent.
    await page.fill("input[name=images_per_prompt]", "-1");
    await page.getByRole("button", { name: "Create job" }).click();
    assert.match(await page.locator(".field-error").first().innerText(), /from 0 to 1000/);
    await page.fill("input[name=images_per_prompt]", "2");
    // The objective's β is for dpo and kto alone, and LoRA's alpha needs a rank: otherwise disabled, and not sent.
    const preview = async () =>
      JSON.parse((await page.locator("[data-testid=job-preview]").textContent()).replace(/^POST \/fine-tunes\n/, ""));
    assert.ok(await page.locator("input[name=objective_beta]").isDisabled());
    await page.selectOption("select[name=objective]", "kto");
    assert.ok(await page.locator("input[name=objective_beta]").isEnabled());
    await page.fill("input[name=objective_beta]", "50");
    assert.equal((await preview()).hyperparameters.objective, "kto");
    assert.equal((await preview()).hyperparameters.objective_beta, 50);
    await page.selectOption("select[name=objective]", "");
    assert.ok(await page.locator("input[name=objective_beta]").isDisabled());
    assert.equal((await preview()).hyperparameters.objective_beta, undefined);
    // The β term's target is sent only when one is chosen.
    assert.equal((await preview()).hyperparameters.pretrain_target, undefined);
    await page.selectOption("select[name=pretrain_target]", "base");
    assert.equal((await preview()).hyperparameters.pretrain_target, "base");
    await page.selectOption("select[name=pretrain_target]", "");
    assert.equal((await preview()).hyperparameters.pretrain_target, undefined);
    // Relabelling is sent with two or more words, and left out when the field is empty.
    assert.equal((await preview()).relabel, undefined);
    await page.fill("input[name=relabel_words]", "one, two");
    assert.deepEqual((await preview()).relabel, { words: ["one", "two"] });
    await page.fill("input[name=relabel_words]", "");
    assert.equal((await preview()).relabel, undefined);
    // The pre-training filter too: its words go in `pretrain_data.filter`, beside the data's other fields.
    const data = (await preview()).pretrain_data;
    await page.fill("input[name=pretrain_filter_words]", "one, two, three");
    assert.deepEqual((await preview()).pretrain_data, {
      ...(data ?? { kind: "shapes_world" }),
      filter: { words: ["one", "two", "three"] },
    });
    await page.fill("input[name=pretrain_filter_words]", "");
    assert.deepEqual((await preview()).pretrain_data, data);
    assert.ok(await page.locator("input[name=lora_alpha]").isDisabled());
    await page.fill("input[name=lora_rank]", "4");
    assert.ok(await page.locator("input[name=lora_alpha]").isEnabled());
    assert.equal((await preview()).hyperparameters.lora_rank, 4);
    // On-policy: the ratings the rate test stored, of the base version's own images, by that rater alone.
    await page.selectOption("select[name=feedback_model]", "(base)");
    await page.fill("input[name=feedback_rater]", "browser-test");
    const filter = { model: "shapes-sd", rater: "browser-test" };
    await page.waitForFunction(
      () => /"feedback_filter"/.test(document.querySelector("[data-testid=job-preview]")?.textContent ?? ""),
    );
    const sent = JSON.parse((await page.locator("[data-testid=job-preview]").textContent()).replace(/^POST \/fine-tunes\n/, ""));
    assert.deepEqual(sent.feedback_filter, filter);
    // Without the stored ratings the filter has nothing to choose from: it is disabled and left out.
    await page.locator("input[name=use_feedback]").uncheck();
    assert.ok(await page.locator("select[name=feedback_model]").isDisabled());
    assert.doesNotMatch(await page.locator("[data-testid=job-preview]").textContent(), /feedback_filter/);
    await page.locator("input[name=use_feedback]").check();
    await screenshot(page, "jobs-form");
    await page.getByRole("button", { name: "Create job" }).dblclick();
    await page.waitForURL(/#\/jobs\/ft/);
    const listed = await json(server, "/fine-tunes");
    assert.equal(listed.data.length, 1, "a double click creates one job");

    await page.waitForFunction(
      () => /succeeded|failed|cancelled/.test(document.querySelector("[data-testid=job-status]")?.textContent ?? ""),
      null,
      { timeout: 600_000, polling: 1000 },
    );
    const status = await page.locator("[data-testid=job-status]").innerText();
    assert.match(status, /succeeded/, `the job ended ${status}:\n${await page.locator("[data-testid=job-events]").innerText()}`);
    // Every stage the API lists (reward too, though this job skips it) is shown done, in the API's order.
    assert.equal(await page.locator(".stage-done").count(), 7);
    assert.match(await page.locator("[data-testid=job-loss]").innerText(), /step 3: \d/);
    assert.ok((await page.locator("[data-testid=job-evaluation] tbody tr").count()) >= 2);
    // The gate's table: every metric the gate measures, the reward first, with its interval and verdict.
    assert.equal(await page.locator("[data-testid=job-gate-table] tbody tr").count(), 8);
    assert.match(await page.locator("[data-testid=job-gate-table] tr[data-metric=reward]").innerText(), /to/);
    assert.match(await page.locator("[data-testid=job-gate]").innerText(), /(passed|refused) on \d+ prompts/);
    await page.waitForSelector("[data-testid=job-compare] .compare-cell img", { timeout: 120_000 });
    await page.waitForFunction(() => document.querySelectorAll("[data-testid=job-compare] .compare-prompt").length === 4, null, {
      timeout: 120_000,
    });
    const job = (await json(server, "/fine-tunes")).data[0];
    assert.deepEqual(job.spec.feedback_filter, filter);
    // A LoRA job: the stored spec records the adapter's alpha (the rank, by default), and the page says what it trained.
    assert.equal(job.spec.hyperparameters.lora_rank, 4);
    assert.equal(job.spec.hyperparameters.lora_alpha, 4);
    assert.equal(await page.locator("[data-testid=job-method]").innerText(), "rwr, LoRA rank 4 (alpha 4)");
    assert.deepEqual(await page.locator("[data-testid=job-stages] li").allInnerTexts(), job.stages);
    newVersion = job.result_model;
    assert.ok(newVersion, JSON.stringify(job));
    await screenshot(page, "job");
  });

  test("models: lineage and evaluation, and activating the new version", async () => {
    await page.goto(`${server.url}/#/models`);
    const row = page.locator(`[data-testid=model-row][data-model="${newVersion}"]`);
    await row.waitFor();
    assert.match(await row.innerText(), /shapes-sd/);
    assert.match(await row.innerText(), /mean reward/);
    await row.getByRole("button", { name: "Activate" }).dblclick();
    await page.waitForSelector(".notice:not([hidden])", { timeout: 120_000 });
    const models = await json(server, "/models");
    assert.equal(models.active, newVersion);
    await page.waitForFunction((id) => /active/.test(document.querySelector(`[data-model="${id}"] td`)?.textContent ?? ""), newVersion);
    await screenshot(page, "models");
    assert.deepEqual(errors, []);
  });

  test("jobs: the stages are the API's; a job that retrains the reward model shows `reward` running, then done", async () => {
    // Nine ratings of shapes-world prompts, good and bad, by one rater: what the reward stage retrains on
    // (trainer/t2i_trainer/jobs/retrain_reward.py needs at least 8, both labels).
    const rater = "reward-test";
    for (const [number, prompt] of ["a red circle", "two blue squares", "three green stars"].entries()) {
      const generated = await fetch(`${server.url}/generate`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt, n: 3, seed: number }),
      });
      const body = await generated.text();
      assert.equal(generated.status, 200, body);
      for (const [index, image] of JSON.parse(body).images.entries()) {
        const rating = { image_id: image.image_id, label: (number + index) % 2 === 0 ? "good" : "bad", rater };
        const stored = await fetch(`${server.url}/feedback`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(rating),
        });
        assert.equal(stored.status, 201, await stored.text());
      }
    }

    // The form's quick trial values, on that rater's ratings, retraining the reward model first.
    await page.goto(`${server.url}/#/jobs`);
    await page.getByRole("button", { name: "Quick trial values" }).click();
    await page.fill("input[name=feedback_rater]", rater);
    await page.locator("input[name=retrain_reward_model]").check();
    await page.waitForFunction(
      () => /"retrain_reward_model": true/.test(document.querySelector("[data-testid=job-preview]")?.textContent ?? ""),
    );
    await page.getByRole("button", { name: "Create job" }).click();
    await page.waitForURL(/#\/jobs\/ft/);
    const id = decodeURIComponent(page.url().split("#/jobs/")[1]);
    const created = await json(server, `/fine-tunes/${encodeURIComponent(id)}`);
    assert.equal(created.spec.retrain_reward_model, true);
    assert.ok(created.stages.includes("reward"), JSON.stringify(created.stages));

    // The page draws the API's stages, in its order, before the job reaches any of them.
    await page.waitForSelector("[data-testid=job-stages] li");
    assert.deepEqual(await page.locator("[data-testid=job-stages] li").allInnerTexts(), created.stages);

    // While the reward model retrains: the stages before it done, `reward` running, the rest pending. Read
    // in the page in one go (the page redraws every 1.5 s), polled often enough to see the stage.
    const reward = created.stages.indexOf("reward");
    const expected = created.stages.map((stage, index) => `${stage}:${index < reward ? "done" : index === reward ? "running" : "pending"}`);
    const seen = await page.waitForFunction(
      () => {
        const items = [...document.querySelectorAll("[data-testid=job-stages] li")];
        const running = items.find((item) => item.dataset.stage === "reward")?.classList.contains("stage-running");
        return running ? items.map((item) => `${item.textContent}:${item.title}`) : null;
      },
      null,
      { timeout: 300_000, polling: 100 },
    );
    assert.deepEqual(await seen.jsonValue(), expected);
    await screenshot(page, "job-reward-stage");

    await page.waitForFunction(
      () => /succeeded|failed|cancelled/.test(document.querySelector("[data-testid=job-status]")?.textContent ?? ""),
      null,
      { timeout: 600_000, polling: 1000 },
    );
    const status = await page.locator("[data-testid=job-status]").innerText();
    assert.match(status, /succeeded/, `the job ended ${status}:\n${await page.locator("[data-testid=job-events]").innerText()}`);
    const job = await json(server, `/fine-tunes/${encodeURIComponent(id)}`);
    assert.deepEqual(await page.locator("[data-testid=job-stages] li").allInnerTexts(), job.stages);
    assert.equal(await page.locator("[data-testid=job-stages] li.stage-done").count(), job.stages.length);
    assert.equal(job.stages.length, 7);
    // It did retrain: a reward version registered by this job, whose events the page lists.
    assert.match(job.metrics.reward_model.version, /-ft-/, JSON.stringify(job.metrics.reward_model));
    assert.match(await page.locator("[data-testid=job-events]").innerText(), /reward_trainer/);
    assert.deepEqual(errors, []);
  });
});

describe("the console with API keys", () => {
  const inference = "console-inference-key-0123";
  const admin = "console-admin-key-456789ab";
  let server;
  let browser;
  let page;

  before(async () => {
    server = await startServer({
      model: "models/tiny-sd",
      args: ["--no-reward-model"],
      env: { T2I_API_KEYS: `rater:inference:${inference}\nops:admin:${admin}` },
    });
    browser = await launch();
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("a 401 asks for a key; a wrong or expired key is said so; the key lives in session storage", async () => {
    // The playground lists the versions as it opens: the 401 brings the key dialog at once.
    await page.goto(`${server.url}/#/playground`);
    const dialog = page.locator("#key-dialog");
    await dialog.waitFor({ state: "visible" });
    assert.match(await page.locator("#key-reason").innerText(), /needs an API key/);
    await screenshot(page, "api-key");
    await page.getByRole("button", { name: "Cancel" }).click();

    // Without a key, generating fails with a readable message.
    await page.fill("textarea[name=prompt]", "a red circle");
    await page.locator("main form button[type=submit]").click();
    await dialog.waitFor({ state: "visible" });
    assert.match(await page.locator(".error").first().innerText(), /needs an API key/);

    await page.fill("#key-input", "not-a-valid-key-at-all");
    await page.click("#key-save");
    await page.locator("main form button[type=submit]").click();
    await dialog.waitFor({ state: "visible" });
    assert.match(await page.locator("#key-reason").innerText(), /refused this tab's key.*not valid/s);

    await page.fill("#key-input", inference);
    await page.click("#key-save");
    await page.waitForFunction((key) => sessionStorage.getItem("t2i-align.api-key") === key, inference);
    await page.locator("main form button[type=submit]").click();
    await page.waitForSelector("[data-testid=generated-image]", { timeout: 60_000 });
    assert.equal(await page.locator(".error:not([hidden])").count(), 0);
  });

  test("an inference key cannot activate a version: the 403 is shown inline", async () => {
    await page.goto(`${server.url}/#/jobs`);
    await page.waitForSelector(".error:not([hidden])");
    // The jobs page lists fine-tunes, which need the fine-tune scope; the error names it.
    assert.match(await page.locator(".error").first().innerText(), /fine-tune/);
    await page.click("#key-button");
    await page.fill("#key-input", admin);
    await page.click("#key-save");
    await page.goto(`${server.url}/#/models`);
    await page.waitForSelector("[data-testid=model-row]");
    assert.equal(await page.locator(".error:not([hidden])").count(), 0);
  });
});
