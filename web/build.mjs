// Bundles niivue into ONE classic script for the offline QC review page (make web).
// Why a classic IIFE: the page is opened from file://, where Chromium refuses module scripts,
// so the bundle must define a global (window.niivue = {Niivue, NVImage, SLICE_TYPE, ...}).
import { build } from "esbuild";
import { mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, "../tasks/curation/review/static/vendor/niivue.js");
const version = JSON.parse(
  readFileSync(resolve(here, "node_modules/@niivue/niivue/package.json"), "utf8")).version;

mkdirSync(dirname(out), { recursive: true });
await build({
  stdin: {
    // re-export the whole public API; the app uses Niivue and SLICE_TYPE
    contents: 'export * from "@niivue/niivue";',
    resolveDir: here,
    loader: "js",
  },
  outfile: out,
  bundle: true,
  format: "iife",
  globalName: "niivue",
  platform: "browser",
  target: ["chrome110", "firefox110", "safari16"],
  minify: true,
  legalComments: "eof",
  banner: { js: `/* @niivue/niivue ${version} (BSD-2-Clause), bundled by web/build.mjs for the offline QC page */` },
  logLevel: "warning",
});
console.log(`${out} (${(statSync(out).size / 1024 / 1024).toFixed(2)} MiB, niivue ${version})`);
