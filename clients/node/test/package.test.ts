// The npm package as users get it (npm pack of the built dist/): only
// dist/ is shipped; publint and @arethetypeswrong/cli find no problem; the
// ES module and CommonJS builds export the same names, and their .d.ts
// files declare every one of them (tsc as an ESM and as a CommonJS
// consumer); the version is the repository's VERSION; the running Node is
// in the declared engines range. install-test.sh does the same from a
// fresh project outside the repository.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { packageRoot, repoRoot, tempDir } from "./harness.js";

const pkg = JSON.parse(readFileSync(join(packageRoot, "package.json"), "utf8")) as {
  name: string;
  version: string;
  engines: { node: string };
  files: string[];
};
const bin = (name: string) => join(packageRoot, "node_modules/.bin", name);
const subpaths = ["", "/middleware"] as const;

let dir: ReturnType<typeof tempDir>;
let tarball: string;
let packed: string[];

before(() => {
  dir = tempDir("node-pack-");
  // dist/ is built by test.sh; --ignore-scripts: do not build it again.
  const r = spawnSync("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir.path], { cwd: packageRoot, encoding: "utf8", timeout: 120_000 });
  assert.equal(r.status, 0, `npm pack failed:\n${r.stdout}\n${r.stderr}`);
  const info = JSON.parse(r.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
  tarball = join(dir.path, info[0]!.filename);
  packed = info[0]!.files.map((f) => f.path).sort();
});

after(() => dir?.remove());

describe("npm package", () => {
  test("ships dist/ (ESM, CJS, .d.ts) and nothing users do not need", () => {
    const extra = packed.filter((p) => !p.startsWith("dist/") && !["package.json", "README.md", "LICENSE"].includes(p));
    assert.deepEqual(extra, [], "files outside dist/");
    assert.deepEqual(
      packed.filter((p) => p.startsWith("dist/") && !/\.(js|d\.ts)$/.test(p)),
      ["dist/cjs/package.json"],
      "only .js, .d.ts and the CommonJS marker in dist/",
    );
    for (const f of ["dist/esm/index.js", "dist/esm/index.d.ts", "dist/cjs/index.js", "dist/cjs/index.d.ts", "dist/esm/middleware.js", "dist/esm/middleware.d.ts", "dist/cjs/middleware.js", "dist/cjs/middleware.d.ts"]) {
      assert.ok(packed.includes(f), `${f} is not in the package`);
    }
    // every module has its declarations
    for (const js of packed.filter((p) => p.endsWith(".js"))) assert.ok(packed.includes(js.replace(/\.js$/, ".d.ts")), `${js} has no .d.ts`);
    assert.deepEqual(JSON.parse(readFileSync(join(packageRoot, "dist/cjs/package.json"), "utf8")), { type: "commonjs" });
  });

  test("publint --strict finds no problem", () => {
    const r = spawnSync(bin("publint"), ["run", tarball, "--strict"], { encoding: "utf8", timeout: 120_000 });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /All good/);
  });

  test("@arethetypeswrong/cli: types resolve for node10, node16 (ESM and CJS) and bundlers, for every entry point", () => {
    const r = spawnSync(bin("attw"), [tarball, "--format", "json"], { encoding: "utf8", timeout: 180_000 });
    const out = JSON.parse(r.stdout) as { analysis: { problems: unknown[]; entrypoints: Record<string, unknown> } };
    assert.deepEqual(out.analysis.problems, [], r.stdout.slice(0, 4000));
    assert.deepEqual(Object.keys(out.analysis.entrypoints).sort(), [".", "./middleware", "./package.json"]);
    assert.equal(r.status, 0, r.stderr);
  });

  test("import and require give the same names, of the same kinds", async () => {
    const require = createRequire(import.meta.url);
    for (const sub of subpaths) {
      const esm = (await import(pkg.name + sub)) as Record<string, unknown>;
      const cjs = require(pkg.name + sub) as Record<string, unknown>;
      const names = Object.keys(esm).sort();
      assert.ok(names.length > (sub ? 5 : 100), `${sub || "."}: only ${names.length} names`);
      assert.deepEqual(Object.keys(cjs).filter((k) => k !== "__esModule").sort(), names, `${sub || "."}: ESM and CJS differ`);
      for (const n of names) assert.equal(typeof cjs[n], typeof esm[n], `${sub || "."}: ${n}`);
    }
    // The CommonJS build is CommonJS, not the ESM build loaded by require(esm).
    assert.match(require.resolve(pkg.name), /dist\/cjs\/index\.js$/);
    assert.match(require.resolve(pkg.name + "/middleware"), /dist\/cjs\/middleware\.js$/);
  });

  test("the .d.ts files declare every exported value, for ESM and CommonJS consumers (tsc)", async () => {
    // Inside the package (self-reference through the exports map).
    const tc = join(packageRoot, "build-test/typecheck");
    rmSync(tc, { recursive: true, force: true });
    mkdirSync(tc, { recursive: true });
    let esm = "";
    let cjs = "";
    for (const [i, sub] of subpaths.entries()) {
      const names = Object.keys((await import(pkg.name + sub)) as object).sort();
      const list = names.map((n) => JSON.stringify(n)).join(", ");
      esm += `import * as m${i} from "${pkg.name}${sub}";\nexport const names${i}: Array<keyof typeof m${i}> = [${list}];\n`;
      cjs += `import m${i} = require("${pkg.name}${sub}");\nexport const names${i}: Array<keyof typeof m${i}> = [${list}];\n`;
    }
    writeFileSync(join(tc, "esm.mts"), esm);
    writeFileSync(join(tc, "cjs.cts"), cjs);
    const r = spawnSync(
      bin("tsc"),
      ["--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", "--types", "node", "--skipLibCheck", join(tc, "esm.mts"), join(tc, "cjs.cts")],
      { cwd: packageRoot, encoding: "utf8", timeout: 180_000 },
    );
    assert.equal(r.status, 0, `tsc:\n${r.stdout}\n${r.stderr}`);
  });

  test("the version is the repository's VERSION", () => {
    assert.equal(pkg.version, readFileSync(join(repoRoot, "VERSION"), "utf8").trim());
    assert.match(tarball, new RegExp(`-${pkg.version.replace(/\./g, "\\.")}\\.tgz$`));
  });

  test("the running Node is in the declared engines range (the suite is what tests it)", () => {
    const m = /^>=(\d+)$/.exec(pkg.engines.node);
    assert.ok(m, `engines.node ${pkg.engines.node}: this test reads only ">=N"`);
    const major = Number(process.versions.node.split(".")[0]);
    assert.ok(major >= Number(m[1]), `Node ${process.versions.node} is outside engines.node ${pkg.engines.node}`);
  });
});
