// Writes check.mts (an ES module consumer) and check.cts (a CommonJS one),
// each importing every name the package's .d.ts files export, from the
// root and from ./middleware, plus a few typed uses; tsc --noEmit then
// checks both. Reads the names with the TypeScript compiler API, as an ESM
// consumer resolves them, and fails when a value the package exports at
// run time is not declared. Run in the consumer project's directory.
import { writeFileSync } from "node:fs";

import ts from "typescript";

const pkg = "@seed-a88e5317/resilience-sidecar";
const entries = [pkg, `${pkg}/middleware`];

writeFileSync("probe.mts", entries.map((e, i) => `export * as e${i} from "${e}";\n`).join(""));
const program = ts.createProgram(["probe.mts"], {
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  target: ts.ScriptTarget.ES2022,
  strict: true,
  noEmit: true,
  types: ["node"],
});
const checker = program.getTypeChecker();
const probe = checker.getSymbolAtLocation(program.getSourceFile("probe.mts"));
const declared = entries.map((_, i) => {
  const ns = checker.getExportsOfModule(probe).find((s) => s.name === `e${i}`);
  const target = checker.getAliasedSymbol(ns);
  return checker.getExportsOfModule(target).map((s) => s.name).sort();
});

let missing = [];
for (const [i, entry] of entries.entries()) {
  const runtime = Object.keys(await import(entry));
  missing.push(...runtime.filter((n) => !declared[i].includes(n)).map((n) => `${entry}: ${n}`));
  if (declared[i].length < (i === 0 ? 100 : 10)) throw new Error(`${entry}: only ${declared[i].length} declared names`);
}
if (missing.length) throw new Error(`exported at run time but not declared:\n${missing.join("\n")}`);

const imports = entries.map((e, i) => `import {\n${declared[i].map((n) => `  ${n},`).join("\n")}\n} from "${e}";\n`).join("");
const uses = `
const client: SidecarClient = createClient({ addr: "127.0.0.1:50051", timeoutMs: 5_000 });
const opts: IdempotencyMiddlewareOptions = { required: true, scope: (req) => String(req.headers["x-tenant"]), maxBodyBytes: 1024 };
export const middleware: IdempotencyMiddleware = idempotencyMiddleware(client, opts);
export const listener = withIdempotency(client, (_req, res) => res.end("ok"), opts);
export const result: Promise<IdempotentResult> = idempotent(client, "k", fingerprint("r"), (exec: Execution) => ({ data: String(exec.attempt) }));
export const problem: IdempotencyProblem["code"] = "IDEMPOTENCY_KEY_IN_USE";
export const err: SidecarError | undefined = undefined;
`;
writeFileSync("check.mts", imports + uses);
writeFileSync("check.cts", imports + uses);
console.log(`gen-types: ${declared.map((d, i) => `${d.length} names from ${entries[i]}`).join(", ")}`);
