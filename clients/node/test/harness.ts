// Test harness: a real redis-server and the real sidecar binary on free
// loopback ports, started by the tests themselves and killed at the end.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

import { createClient, type SidecarClient } from "@seed-a88e5317/resilience-sidecar";

/** clients/node, wherever the compiled test runs from. */
export const packageRoot = findPackageRoot(dirname(fileURLToPath(import.meta.url)));
/** The repository root (clients/node/../..). */
export const repoRoot = resolve(packageRoot, "../..");

function findPackageRoot(dir: string): string {
  for (let d = dir; ; d = dirname(d)) {
    if (existsSync(join(d, "package.json")) && existsSync(join(d, "buf.gen.yaml"))) return d;
    if (dirname(d) === d) throw new Error(`no clients/node above ${dir}`);
  }
}

/** The sidecar binary: $SIDECAR_BIN, else ../../.bin/sidecar from clients/node. */
export function sidecarBin(): string {
  const bin = process.env.SIDECAR_BIN ? resolve(process.env.SIDECAR_BIN) : join(repoRoot, ".bin/sidecar");
  if (!existsSync(bin)) {
    throw new Error(`sidecar binary ${bin} not found: build it (cd ${repoRoot} && go build -o .bin/sidecar ./cmd/sidecar) or set SIDECAR_BIN`);
  }
  return bin;
}

/** A free loopback TCP port (bound and closed again). */
export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => res(port));
    });
  });
}

const children = new Set<ChildProcess>();
// Never leave a redis-server or sidecar behind, even when a test crashes.
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

interface Proc {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

function start(cmd: string, args: string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn(cmd, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  let out = "";
  const keep = (b: Buffer) => {
    out = (out + b.toString()).slice(-20_000);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  const exited = new Promise<number | null>((res) => {
    child.on("exit", (code) => {
      children.delete(child);
      res(code);
    });
    child.on("error", (e) => {
      keep(Buffer.from(String(e)));
      children.delete(child);
      res(-1);
    });
  });
  return { child, output: () => out, exited };
}

async function stop(p: Proc): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill("SIGKILL");
  await p.exited;
}

/** A redis-server without persistence on a free loopback port. */
export class Redis {
  private constructor(
    readonly port: number,
    private readonly proc: Proc,
  ) {}

  static async start(): Promise<Redis> {
    for (let tries = 0; ; tries++) {
      const port = await freePort();
      const proc = start("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], process.env);
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline) {
        if (proc.child.exitCode !== null) break;
        if (proc.output().includes("Ready to accept connections")) return new Redis(port, proc);
        await sleep(20);
      }
      await stop(proc);
      if (tries >= 2) throw new Error(`redis-server did not start:\n${proc.output()}`);
    }
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  stop(): Promise<void> {
    return stop(this.proc);
  }
}

/** The environment of a child, without the SIDECAR_* variables of this one. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("SIDECAR_")) env[k] = v;
  }
  return { ...env, ...extra };
}

/** The real sidecar binary on a free loopback port, on the given Redis. */
export class Sidecar {
  private constructor(
    readonly addr: string,
    private readonly proc: Proc,
  ) {}

  /**
   * Starts it on a free loopback port, on the unix socket at `unixSocket`,
   * or on `addr` (e.g. the address of a sidecar stopped before: a restart).
   */
  static async start(redis: Redis, extraArgs: string[] = [], opts: { unixSocket?: string; addr?: string } = {}): Promise<Sidecar> {
    const bin = sidecarBin();
    for (let tries = 0; ; tries++) {
      const addr = opts.addr ?? (opts.unixSocket ? `unix://${opts.unixSocket}` : `127.0.0.1:${await freePort()}`);
      const proc = start(bin, ["--listen", addr, "--metrics-listen", "", "--redis-url", redis.url, "--log-level", "warn", ...extraArgs], cleanEnv());
      const sc = new Sidecar(addr, proc);
      if (await sc.waitReady(15_000)) return sc;
      await stop(proc);
      if (tries >= 2) throw new Error(`sidecar did not become ready on ${addr}:\n${proc.output()}`);
    }
  }

  /** Retries a cheap call until it answers (any answer, even an auth error). */
  private async waitReady(ms: number): Promise<boolean> {
    const client = createClient({ addr: this.addr, timeoutMs: 1000, token: "" });
    const deadline = Date.now() + ms;
    try {
      while (Date.now() < deadline) {
        if (this.proc.child.exitCode !== null) return false;
        try {
          await client.lock.getLock({ key: "harness/ready" });
          return true;
        } catch (e) {
          const code = (e as { code?: number }).code;
          if (code === 16 /* UNAUTHENTICATED: up, with a token */) return true;
        }
        await sleep(50);
      }
      return false;
    } finally {
      client.close();
    }
  }

  get pid(): number {
    return this.proc.child.pid!;
  }

  output(): string {
    return this.proc.output();
  }

  /** SIGSTOP: the process keeps its socket but answers nothing. */
  freeze(): void {
    this.proc.child.kill("SIGSTOP");
  }

  /**
   * SIGSTOP, and wait until the kernel shows the process stopped (state T
   * in /proc/<pid>/stat): a signal is delivered asynchronously, and the
   * process may run a little longer on another core.
   */
  async frozen(): Promise<void> {
    this.freeze();
    for (let i = 0; ; i++) {
      const stat = readFileSync(`/proc/${this.pid}/stat`, "utf8");
      // "pid (comm) state ...": the state follows the last ")".
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("T")) return;
      if (i > 500) throw new Error(`sidecar ${this.pid} not stopped 5 s after SIGSTOP: ${stat}`);
      await sleep(10);
    }
  }

  thaw(): void {
    this.proc.child.kill("SIGCONT");
  }

  stop(): Promise<void> {
    return stop(this.proc);
  }
}

/** A client of sidecar, closed by the returned cleanup. */
export function clientOf(sc: Sidecar, opts: { timeoutMs?: number; token?: string } = {}): SidecarClient {
  return createClient({ addr: sc.addr, token: opts.token ?? "", ...opts });
}

/** A scratch directory, removed by the returned cleanup. */
export function tempDir(prefix: string): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Runs a node program to its end, with a bound and without this process's SIDECAR_* variables; resolves with its exit code and output. */
export async function runNode(
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, args, {
    cwd: opts.cwd,
    env: cleanEnv(opts.env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (b: Buffer) => (stdout += b.toString()));
  child.stderr.on("data", (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
  const code = await new Promise<number | null>((res) => child.on("exit", (c) => res(c)));
  clearTimeout(timer);
  children.delete(child);
  return { code, stdout, stderr };
}

/** Sends one command to Redis (RESP) and resolves with the raw reply. */
export async function redisCommand(port: number, ...args: string[]): Promise<string> {
  const payload = `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join("");
  return new Promise((res, rej) => {
    const sock = net.connect(port, "127.0.0.1");
    let reply = "";
    sock.setTimeout(5000, () => sock.destroy(new Error("redis command timed out")));
    sock.on("error", rej);
    sock.on("data", (b) => {
      reply += b.toString();
      if (reply.endsWith("\r\n")) {
        sock.end();
        res(reply);
      }
    });
    sock.write(payload);
  });
}

/** A sidecar config file with the given YAML, removed by the returned cleanup. */
export function configFile(yaml: string): { path: string; remove: () => void } {
  const dir = tempDir("sidecar-config-");
  const path = join(dir.path, "sidecar.yaml");
  writeFileSync(path, yaml);
  return { path, remove: dir.remove };
}

/** A plain HTTP server on a free loopback port (an upstream of the sidecar), stopped by close(). */
export async function startHttp(handler: http.RequestListener): Promise<{ url: string; port: number; close: () => Promise<void> }> {
  const srv = http.createServer(handler);
  await new Promise<void>((res, rej) => {
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => res());
  });
  const port = (srv.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    close: () =>
      new Promise<void>((res) => {
        srv.closeAllConnections();
        srv.close(() => res());
      }),
  };
}
