// The console's API types, generated from the committed spec (openapi/openapi.json, itself checked against the
// server's code by tests/cli.rs) with openapi-typescript, pinned in package.json. The options live here only.
//
//   node scripts/api-types.mjs          writes src/api.gen.ts (`npm run gen-api`, `make web-api`)
//   node scripts/api-types.mjs --check  generates into a temporary file and fails when src/api.gen.ts differs
//                                       (`npm run check-api`, run by `make lint`)

import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const SPEC = path.join(WEB, "..", "openapi", "openapi.json");
const TARGET = path.join(WEB, "src", "api.gen.ts");
const CLI = path.join(WEB, "node_modules", "openapi-typescript", "bin", "cli.js");
// `--empty-objects-unknown`: the free-form JSON objects (a job's spec and metrics, an event's data) become
// Record<string, unknown> rather than the default Record<string, never>, which would claim they are empty.
const OPTIONS = ["--empty-objects-unknown"];

function generate(output) {
  const result = spawnSync(process.execPath, [CLI, SPEC, ...OPTIONS, "--output", output], {
    cwd: WEB,
    encoding: "utf8",
  });
  if (result.status !== 0) {
    process.stderr.write(result.stdout + result.stderr);
    console.error(`openapi-typescript failed on ${path.relative(process.cwd(), SPEC)} (exit ${result.status})`);
    process.exit(1);
  }
}

if (process.argv.includes("--check")) {
  const folder = mkdtempSync(path.join(tmpdir(), "api-gen-"));
  try {
    const fresh = path.join(folder, "api.gen.ts");
    generate(fresh);
    let committed = null;
    try {
      committed = readFileSync(TARGET, "utf8");
    } catch {
      // missing: stale as well
    }
    if (committed !== readFileSync(fresh, "utf8")) {
      console.error("web/src/api.gen.ts is stale: run `make web-api`");
      process.exit(1);
    }
    console.log("web/src/api.gen.ts matches openapi/openapi.json");
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
} else {
  generate(TARGET);
  console.log(`wrote ${path.relative(process.cwd(), TARGET)} from openapi/openapi.json`);
}
