import assert from "node:assert/strict";
import { recordClaims, recordedClaims } from "./claims.ts";
import type { ClaimSummary } from "../config/model.ts";

const claim = (domain: string, first: number): ClaimSummary => ({
  domain,
  file: `domain XML of ${domain}`,
  path: "forwards/portForward[1]/range[1]",
  line: 4,
  column: 9,
  address: "203.0.113.1",
  protocol: "tcp",
  first,
  last: first,
});

Deno.test("recordedClaims(): the other running guests' XML claims; a stopped guest's record is gone or skipped", () => {
  const dir = Deno.makeTempDirSync();
  try {
    recordClaims(dir, "web1", [claim("web1", 8080)]);
    recordClaims(dir, "web2", [claim("web2", 8081), claim("web2", 8082)]);
    const running = new Set(["web1", "web2"]);
    const up = (d: string) => running.has(d);
    assert.deepEqual(recordedClaims(dir, "web1", up).map((c) => c.first).sort(), [8081, 8082]);
    assert.deepEqual(recordedClaims(dir, "web3", up).map((c) => c.first).sort(), [8080, 8081, 8082]);
    // web2 no longer runs (its stopped never came): its record counts for nothing.
    running.delete("web2");
    assert.deepEqual(recordedClaims(dir, "web3", up).map((c) => c.first), [8080]);
    // Its stop removes the record; so does a start without forwards in its XML.
    recordClaims(dir, "web1", []);
    assert.deepEqual(recordedClaims(dir, "web3", () => true).map((c) => c.first).sort(), [8081, 8082]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
  // A state directory that cannot be (a file in its way, as a read-only /run would be): nothing thrown.
  const blocked = `${Deno.makeTempFileSync()}/state`;
  recordClaims(blocked, "web1", [claim("web1", 1)]);
  assert.deepEqual(recordedClaims(blocked, "web2", () => true), []);
  Deno.removeSync(blocked.slice(0, -"/state".length));
});
