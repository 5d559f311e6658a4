// The cross-language scenarios (clients/scenarios.txt): scenario(id, name,
// fn) declares a node:test test tagged with the id; when it passes, the id
// is appended to the file named by RESILIENCE_SCENARIO_LOG (set by
// test/run.ts), which then fails the full run if an id of the list has no
// passing test.

import { appendFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test, type TestContext } from "node:test";

import { repoRoot } from "./harness.js";

/** The scenario ids of clients/scenarios.txt, in file order. */
export function scenarioIds(): string[] {
  return readFileSync(join(repoRoot, "clients/scenarios.txt"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
}

const known = new Set(scenarioIds());

/** A test of scenario `id` (which must be listed in clients/scenarios.txt). */
export function scenario(id: string, name: string, fn: (t: TestContext) => Promise<void>): void {
  if (!known.has(id)) throw new Error(`scenario ${JSON.stringify(id)} is not listed in clients/scenarios.txt`);
  test(`${name} [scenario ${id}]`, async (t) => {
    await fn(t);
    const log = process.env.RESILIENCE_SCENARIO_LOG;
    if (log) appendFileSync(log, `${id}\n`);
  });
}
