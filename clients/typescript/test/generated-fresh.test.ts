/**
 * src/gen/ is generated (`make clients` / `npm run generate`) and committed: this test generates
 * again into a temporary directory with the same buf.gen.yaml and fails when anything differs,
 * so a .proto change without regenerating cannot go unnoticed.
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { PACKAGE_DIR, tempDir } from "./support/server.js";

function filesBelow(root: string): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        walk(full);
      } else {
        files.set(path.relative(root, full), readFileSync(full, "utf8"));
      }
    }
  };
  walk(root);
  return files;
}

test("src/gen matches what buf generate gives from the .proto files", () => {
  const out = tempDir("gen");
  try {
    const buf = path.join(PACKAGE_DIR, "node_modules", ".bin", "buf");
    execFileSync(buf, ["generate", "--output", out], { cwd: PACKAGE_DIR, stdio: ["ignore", "pipe", "pipe"] });
    const committed = filesBelow(path.join(PACKAGE_DIR, "src", "gen"));
    const fresh = filesBelow(path.join(out, "src", "gen"));
    assert.ok(fresh.size > 0, "buf generate wrote nothing");
    assert.deepEqual([...committed.keys()].sort(), [...fresh.keys()].sort(), "the same files (run `make clients`)");
    for (const [name, text] of fresh) {
      assert.ok(committed.get(name) === text, `src/gen/${name} is stale: run \`make clients\``);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
