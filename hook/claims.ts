/**
 * The public ports the running guests' XML claims. The config's claims are all in one place (its files); a guest's
 * XML is read only when it starts, so each start with forwards in its XML records their claims under our
 * directory on /run, and `stopped` removes the record: a port two guests' XML claim is found at the second start,
 * as two claims in the config are, and that start fails with the other's place named.
 */

import type { ClaimSummary } from "../config/model.ts";
import { domainHash } from "../backends/backend.ts";

function dir(stateDir: string): string {
  return `${stateDir}/xml-claims`;
}

function file(stateDir: string, domain: string): string {
  return `${dir(stateDir)}/${domainHash(domain)}.json`;
}

/** Records (or, with none, removes) what a started guest's XML claims; best effort, never throws. */
export function recordClaims(stateDir: string, domain: string, claims: ClaimSummary[]): void {
  try {
    if (claims.length === 0) return Deno.removeSync(file(stateDir, domain));
    Deno.mkdirSync(dir(stateDir), { recursive: true, mode: 0o700 });
    const tmp = `${file(stateDir, domain)}.${Deno.pid}`;
    Deno.writeTextFileSync(tmp, JSON.stringify({ domain, claims }));
    Deno.renameSync(tmp, file(stateDir, domain));
  } catch {
    // Nothing recorded (no /run, or nothing to remove): a clash with this guest is then found by no one.
  }
}

/** What the XML of the other running guests claims (`running`: whether a guest still runs; stale records skipped). */
export function recordedClaims(
  stateDir: string,
  domain: string,
  running: (domain: string) => boolean,
): ClaimSummary[] {
  const out: ClaimSummary[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir(stateDir))];
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!e.name.endsWith(".json")) continue;
    try {
      const record = JSON.parse(Deno.readTextFileSync(`${dir(stateDir)}/${e.name}`));
      if (record.domain === domain || !running(record.domain)) continue;
      out.push(...record.claims);
    } catch {
      // Being replaced, or not ours to read: skipped.
    }
  }
  return out;
}
