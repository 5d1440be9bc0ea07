/**
 * Runs a real Tariff server process on 127.0.0.1 for the integration tests (the TypeScript twin
 * of tests/serverproc.py): free port, `python -m server.cli serve ... --demo`, wait for
 * grpc.health.v1 SERVING, kill -9, restart on the same port and data directory, stop.
 *
 * The Python interpreter is $TARIFF_PYTHON, by default the repository's .venv/bin/python. The
 * server's output goes to `<dataDir>.server.log` (appended across restarts); start failures
 * carry its tail.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { TariffClient, type TariffClientOptions } from "../../src/index.js";

/** clients/typescript (this file runs from dist/test/support/). */
export const PACKAGE_DIR = fileURLToPath(new URL("../../..", import.meta.url));
export const REPO_ROOT = path.resolve(PACKAGE_DIR, "..", "..");
export const PYTHON = process.env["TARIFF_PYTHON"] ?? path.join(REPO_ROOT, ".venv", "bin", "python");
const HOST = "127.0.0.1";

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, HOST, () => {
      const address = probe.address();
      probe.close(() => {
        if (address === null || typeof address === "string") {
          reject(new Error("no port"));
        } else {
          resolve(address.port);
        }
      });
    });
  });
}

/** A fresh temporary directory; remove it with `rmSync(dir, { recursive: true, force: true })`. */
export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `tariff-ts-${prefix}-`));
}

export class TariffServer {
  readonly dataDir: string;
  readonly logPath: string;
  readonly demo: boolean;
  readonly extraArgs: readonly string[];
  /** How start() reaches the server to see it SERVING (TLS options for a server started with --tls-cert). */
  readonly clientOptions: TariffClientOptions;
  port = 0;
  starts = 0;
  private proc: ChildProcess | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  private exitCode: number | null | undefined;

  constructor(
    dataDir: string,
    options: { demo?: boolean; extraArgs?: readonly string[]; clientOptions?: TariffClientOptions } = {},
  ) {
    this.dataDir = dataDir;
    this.logPath = `${dataDir}.server.log`;
    this.demo = options.demo ?? false;
    this.extraArgs = options.extraArgs ?? [];
    this.clientOptions = options.clientOptions ?? {};
  }

  get target(): string {
    return `${HOST}:${this.port}`;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get running(): boolean {
    return this.proc !== undefined && this.exitCode === undefined;
  }

  /** Spawns the server and waits until Health/Check("") answers SERVING. */
  async start(timeoutMs = 30_000): Promise<void> {
    if (this.running) {
      throw new Error(`server on ${this.target} is already running`);
    }
    if (!existsSync(PYTHON)) {
      throw new Error(`no Python at ${PYTHON}: run \`make install\` or set TARIFF_PYTHON`);
    }
    if (this.port === 0) {
      this.port = await freePort();
    }
    this.starts += 1;
    const args = ["-m", "server.cli", "serve", "--listen", this.target, "--data-dir", this.dataDir];
    if (this.demo) {
      args.push("--demo");
    }
    args.push(...this.extraArgs);
    const log = openSync(this.logPath, "a");
    writeSync(log, `\n=== start #${this.starts} at ${new Date().toISOString()}: ${PYTHON} ${args.join(" ")}\n`);
    const proc = spawn(PYTHON, args, {
      cwd: REPO_ROOT,
      env: { ...process.env, PYTHONUNBUFFERED: "1", PYTHONFAULTHANDLER: "1" },
      stdio: ["ignore", log, log],
      detached: true, // its own process group: a Ctrl-C on the test run does not reach it first
    });
    closeSync(log);
    this.proc = proc;
    this.exitCode = undefined;
    this.exited = new Promise((resolve) => {
      proc.once("exit", (code, signal) => {
        this.exitCode = code ?? (signal === null ? null : -1);
        resolve(this.exitCode);
      });
    });
    const client = new TariffClient(this.target, this.clientOptions);
    try {
      const exitedEarly = this.exited.then((code) => {
        throw new Error(`server exited (code ${code}) before SERVING on ${this.target}; log tail:\n${this.logTail()}`);
      });
      await Promise.race([client.waitReady(timeoutMs), exitedEarly]);
      exitedEarly.catch(() => undefined);
    } catch (error) {
      await this.kill9();
      throw new Error(`server not SERVING on ${this.target}: ${String(error)}\nlog tail:\n${this.logTail()}`);
    } finally {
      client.close();
    }
  }

  /** SIGKILL and wait for the exit: a crash, nothing gets to flush. */
  async kill9(): Promise<void> {
    if (this.running && this.proc?.pid !== undefined) {
      process.kill(this.proc.pid, "SIGKILL");
    }
    await this.exited;
  }

  /** Starts again on the same port and data directory (kill -9 first if still running). */
  async restart(timeoutMs = 30_000): Promise<void> {
    await this.kill9();
    await this.start(timeoutMs);
  }

  /** SIGTERM, then SIGKILL after timeoutMs; resolves with the exit code. */
  async stop(timeoutMs = 10_000): Promise<number | null> {
    if (!this.running || this.proc?.pid === undefined) {
      return (await this.exited) ?? null;
    }
    process.kill(this.proc.pid, "SIGTERM");
    const timer = setTimeout(() => {
      if (this.running && this.proc?.pid !== undefined) {
        process.kill(this.proc.pid, "SIGKILL");
      }
    }, timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  logTail(lines = 40): string {
    try {
      return readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }
}

/** A demo server in a fresh temporary directory, with a cleanup that stops it and removes the directory. */
export async function startDemoServer(prefix: string): Promise<{ server: TariffServer; cleanup: () => Promise<void> }> {
  const dir = tempDir(prefix);
  const server = new TariffServer(path.join(dir, "data"), { demo: true });
  await server.start();
  return {
    server,
    cleanup: async () => {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
