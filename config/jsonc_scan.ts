/**
 * A flat, iterative pass over JSONC text, before the tree parser: what would make that parser fail as a whole
 * (nesting deep enough to exhaust its recursion) found and cut out, scoped to the top-level entry that holds it.
 */

/** Nesting deeper than any config needs (an entry is ~5 levels) and far below where recursion fails (~5000). */
export const MAX_DEPTH = 64;

/** A top-level value nested too deep: its key (undefined at the root itself), where the limit is passed, its span. */
export interface TooDeep {
  key: string | undefined;
  offset: number;
  start: number;
  end: number;
}

/**
 * Finds the top-level values nested deeper than `maxDepth` and returns the text with each blanked out (a `0` and
 * spaces, newlines kept, so every other offset, line and column stays the same), and where they were. Strings and
 * comments are skipped as the JSONC parser reads them; an unterminated one runs to the end.
 */
export function cutTooDeep(text: string, maxDepth = MAX_DEPTH): { text: string; tooDeep: TooDeep[] } {
  const tooDeep: TooDeep[] = [];
  let depth = 0;
  let key: string | undefined;
  let keyStart = -1, valueStart = -1;
  let expectKey = false;
  let deep: { offset: number } | undefined;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      for (i++; i < n; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) i++;
        else if (d === 0x22 || d === 0x0a) break;
      }
      if (depth === 1 && expectKey) {
        keyStart = start;
        try {
          key = JSON.parse(text.slice(start, i + 1));
        } catch {
          key = text.slice(start + 1, i);
        }
        expectKey = false;
      } else if (depth === 1 && valueStart < 0 && keyStart >= 0) valueStart = start;
      continue;
    }
    if (c === 0x2f /* / */ && text.charCodeAt(i + 1) === 0x2f) {
      const end = text.indexOf("\n", i);
      i = end < 0 ? n : end;
      continue;
    }
    if (c === 0x2f && text.charCodeAt(i + 1) === 0x2a /* * */) {
      const end = text.indexOf("*/", i + 2);
      i = end < 0 ? n : end + 1;
      continue;
    }
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (depth === 1 && valueStart < 0) valueStart = i;
      depth++;
      if (depth === 1) expectKey = c === 0x7b;
      if (depth > maxDepth && !deep) deep = { offset: i };
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
      if (depth === 1 && deep) {
        tooDeep.push({ key, offset: deep.offset, start: valueStart, end: i + 1 });
        deep = undefined;
      }
    } else if (depth === 1 && c === 0x2c /* , */) {
      expectKey = true;
      keyStart = valueStart = -1;
      key = undefined;
    } else if (depth === 1 && valueStart < 0 && keyStart >= 0 && c > 0x20 && c !== 0x3a /* : */) {
      valueStart = i;
    }
  }
  // Still open at the end (a truncated file): the value runs to the end; at the root itself, there is no key.
  if (deep) {
    tooDeep.push(
      depth >= 1 && valueStart >= 0 && key !== undefined
        ? { key, offset: deep.offset, start: valueStart, end: n }
        : { key: undefined, offset: deep.offset, start: 0, end: n },
    );
  }
  if (tooDeep.length === 0) return { text, tooDeep };
  let out = "", at = 0;
  for (const d of tooDeep) {
    const blank = text.slice(d.start, d.end).replace(/[^\n\r]/g, " ");
    out += text.slice(at, d.start) + "0" + blank.slice(1);
    at = d.end;
  }
  return { text: out + text.slice(at), tooDeep };
}

/**
 * The char offsets (UTF-16, as in the decoded text) where `bytes` hold no valid UTF-8: each maximal ill-formed
 * subsequence, as the WHATWG decoder replaces it with one U+FFFD. Empty for valid UTF-8.
 */
export function invalidUtf8(bytes: Uint8Array): number[] {
  const out: number[] = [];
  let units = 0;
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i]!;
    if (b < 0x80) {
      units++;
      i++;
      continue;
    }
    let need = 0, lower = 0x80, upper = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lower = 0xa0;
      if (b === 0xed) upper = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lower = 0x90;
      if (b === 0xf4) upper = 0x8f;
    } else {
      out.push(units++);
      i++;
      continue;
    }
    let j = 1;
    for (; j <= need; j++) {
      const next = bytes[i + j];
      if (next === undefined || next < lower || next > upper) break;
      lower = 0x80;
      upper = 0xbf;
    }
    if (j <= need) {
      // The maximal subpart read so far becomes one replacement character; the byte that broke it starts anew.
      out.push(units++);
      i += j;
      continue;
    }
    units += need === 3 ? 2 : 1;
    i += need + 1;
  }
  return out;
}
