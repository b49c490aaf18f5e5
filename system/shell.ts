/** Words as a POSIX shell needs them typed: for the commands we suggest to people (fix lines, notes). */

/** `word` as one shell word: as it is where nothing in it is special, else in single quotes (`a'b` -> `'a'\''b'`). */
export function shellQuote(word: string): string {
  if (/^[A-Za-z0-9_./:@%+,=-]+$/.test(word)) return word;
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * The operator command `qemu <command> <domain>` as one would type it: the name quoted, and after `--` where it
 * starts with a dash (else it would be read as an option).
 */
export function qemuCommand(command: string, domain: string): string {
  return `qemu ${command} ${domain.startsWith("-") ? "-- " : ""}${shellQuote(domain)}`;
}
