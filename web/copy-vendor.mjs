// Copies the pinned third-party browser files from node_modules into api/ui/static/vendor, with their licenses.
// Run after `npm ci`; the copied files are committed, so neither the service nor its tests need npm.
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "..", "api", "ui", "static", "vendor");

const files = {
  uplot: ["dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE"],
  "swagger-ui-dist": ["swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE"],
};

rmSync(vendor, { recursive: true, force: true });
for (const [pkg, names] of Object.entries(files)) {
  mkdirSync(join(vendor, pkg), { recursive: true });
  for (const name of names) {
    const target = join(vendor, pkg, name.split("/").pop());
    copyFileSync(join(here, "node_modules", pkg, name), target);
    console.log(`${pkg}/${name} -> ${target}`);
  }
}
