// A `t2i-align serve` child process for the browser tests: its own data directory and port, ready when
// /ready answers 200, stopped (and its folder removed) at the end.

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

function binary() {
  if (process.env.T2I_BINARY) return process.env.T2I_BINARY;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target");
  return path.join(target, "release", "t2i-align");
}

function ortLibrary() {
  if (process.env.ORT_DYLIB_PATH) return process.env.ORT_DYLIB_PATH;
  return readFileSync(path.join(ROOT, ".venv", "ort-dylib-path"), "utf8").trim();
}

export async function startServer({ model = "models/shapes-sd", args = [], env = {} } = {}) {
  const dataDir = mkdtempSync(path.join(tmpdir(), "t2i-console-"));
  const child = spawn(
    binary(),
    ["serve", "--host", "127.0.0.1", "--port", "0", "--intra-threads", "1", "--data-dir", dataDir, "--model", model, ...args],
    {
      cwd: ROOT,
      env: { ...process.env, ORT_DYLIB_PATH: ortLibrary(), RUST_LOG: "info,ort=warn", ...env },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  let log = "";
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start:\n${log}`)), 60_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const match = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.on("error", (error) => reject(new Error(`cannot start ${binary()}: ${error.message} (run \`make build\`)`)));
    child.on("exit", (code) => reject(new Error(`the server exited with ${code}:\n${log}`)));
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    const ready = await fetch(`${url}/ready`).then((r) => r.ok, () => false);
    if (ready) break;
    if (Date.now() > deadline) throw new Error(`not ready within 120 s:\n${log}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    url,
    dataDir,
    log: () => log,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((resolve) => {
        if (child.exitCode !== null) resolve();
        else child.on("exit", resolve);
      });
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
