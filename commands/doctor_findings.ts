/** What `doctor` reports: findings (ok, note, fail), per forward and for the host. */

/** One link of a forward's path: fine, worth knowing, or broken (then with the command that fixes it). */
export interface Finding {
  level: "ok" | "note" | "fail";
  what: string;
  fix?: string;
}

/** What doctor found for one forward of one domain. */
export interface ForwardReport {
  domain: string;
  forward: string;
  findings: Finding[];
}

/** Everything doctor found: the host's links, then each forward's. */
export interface DoctorReport {
  host: Finding[];
  forwards: ForwardReport[];
}

export const ok = (what: string): Finding => ({ level: "ok", what });

export const note = (what: string): Finding => ({ level: "note", what });

export const fail = (what: string, fix?: string): Finding => ({
  level: "fail",
  what,
  ...(fix ? { fix } : {}),
});
