import { defineConfig } from "vite";

// The console is embedded in the t2i-align binary (build.rs reads dist/), served at `/` with its hashed
// assets under `/assets/`. Nothing is loaded from elsewhere: no CDN, no web fonts.
export default defineConfig({
  base: "/",
  build: {
    outDir: "dist",
    assetsDir: "assets",
    emptyOutDir: true,
    target: "es2022",
    // One small script and one stylesheet; no inlined data URLs (the CSP allows only same-origin scripts).
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
  server: {
    // `npm run dev` serves the sources with hot reload and sends API calls to a local `make run`.
    proxy: Object.fromEntries(
      ["/generate", "/score", "/feedback", "/fine-tunes", "/models", "/images", "/health", "/ready", "/metrics"].map(
        (path) => [path, "http://127.0.0.1:8080"],
      ),
    ),
  },
});
