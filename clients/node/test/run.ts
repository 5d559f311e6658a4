// Runs the test files with node --test and, for a full run (no file named
// on the command line), fails when a scenario of clients/scenarios.txt has
// no passing test (see scenarios.ts).
//
//   node build-test/test/run.js                       all *.test.js, and the scenario check
//   node build-test/test/run.js build-test/test/x.test.js   only those files, no check

import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { scenarioIds } from "./scenarios.js";

const here = dirname(fileURLToPath(import.meta.url));
const named = process.argv.slice(2);
const files = named.length
  ? named
  : readdirSync(here)
      .filter((f) => f.endsWith(".test.js"))
      .sort()
      .map((f) => join(here, f));

const dir = mkdtempSync(join(tmpdir(), "node-scenarios-"));
const log = join(dir, "passed.log");
let code: number;
try {
  const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-timeout=120000", ...files], {
    stdio: "inherit",
    env: { ...process.env, RESILIENCE_SCENARIO_LOG: log },
  });
  code = r.status ?? 1;
  if (named.length) {
    console.log(`scenario check skipped: the run was filtered to ${named.length} file(s)`);
  } else {
    let passed = new Set<string>();
    try {
      passed = new Set(readFileSync(log, "utf8").split("\n").filter(Boolean));
    } catch {
      // no scenario test passed
    }
    const ids = scenarioIds();
    const missing = ids.filter((id) => !passed.has(id));
    if (missing.length) {
      console.log(`scenario check FAILED: no passing test for ${missing.length} of ${ids.length} scenarios of clients/scenarios.txt: ${missing.join(", ")}`);
      code = 1;
    } else {
      console.log(`scenario check: all ${ids.length} scenarios of clients/scenarios.txt passed`);
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(code);
