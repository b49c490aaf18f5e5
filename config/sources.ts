/** Allowed sources: addresses, networks and ranges of both families, read and put in the kernel's own form. */

import { type Family, formatAddress, parseAddress } from "../system/address.ts";

/** One source item as an interval of addresses of one family (`first` to `last`, both included). */
export interface SourceInterval {
  family: Family;
  first: bigint;
  last: bigint;
}

/**
 * Parses one item: an address, a network (CIDR; host bits may be set, they are cleared) or a range `a-b` of one
 * family with a <= b. A string saying why it is none of them otherwise.
 */
export function parseSourceItem(text: string): SourceInterval | string {
  const dash = text.indexOf("-");
  if (dash >= 0) {
    const a = parseAddress(text.slice(0, dash).trim()), b = parseAddress(text.slice(dash + 1).trim());
    if (!a || !b) return "Not an address range (first-last)";
    if (a.family !== b.family) return "A range cannot span both families";
    if (a.value > b.value) return "The range's first address is after its last";
    return { family: a.family, first: a.value, last: b.value };
  }
  const [addrText = "", prefixText, ...more] = text.split("/");
  const addr = parseAddress(addrText);
  if (!addr) return "Not an IP address, network (CIDR) or range (first-last)";
  const bits = addr.family === 4 ? 32 : 128;
  if (prefixText === undefined) return { family: addr.family, first: addr.value, last: addr.value };
  if (more.length > 0 || !/^[0-9]{1,3}$/.test(prefixText) || Number(prefixText) > bits) {
    return `Not a network: the prefix must be 0 to ${bits}`;
  }
  const hostBits = BigInt(bits - Number(prefixText));
  const first = (addr.value >> hostBits) << hostBits;
  return { family: addr.family, first, last: first + (1n << hostBits) - 1n };
}

/**
 * The intervals of one family sorted, with overlapping and adjacent ones merged: the form nftables keeps an
 * interval set in (and lists it back), so what is planned and what is live read the same for both backends.
 */
export function mergeIntervals(items: SourceInterval[]): SourceInterval[] {
  const sorted = [...items].sort((a, b) =>
    a.family - b.family || (a.first < b.first ? -1 : a.first > b.first ? 1 : 0)
  );
  const out: SourceInterval[] = [];
  for (const i of sorted) {
    const prev = out.at(-1);
    if (prev && prev.family === i.family && i.first <= prev.last + 1n) {
      if (i.last > prev.last) prev.last = i.last;
    } else out.push({ ...i });
  }
  return out;
}

/** An interval's text as nftables lists it: an address, a network where it is exactly one, else `first-last`. */
export function formatInterval(i: SourceInterval): string {
  if (i.first === i.last) return formatAddress(i.family, i.first);
  const size = i.last - i.first + 1n;
  const bits = i.family === 4 ? 32 : 128;
  // A power of two, aligned on itself: a network.
  if ((size & (size - 1n)) === 0n && i.first % size === 0n) {
    const prefix = bits - (size.toString(2).length - 1);
    return `${formatAddress(i.family, i.first)}/${prefix}`;
  }
  return `${formatAddress(i.family, i.first)}-${formatAddress(i.family, i.last)}`;
}

/** The texts of a family's items, merged and sorted (see mergeIntervals), as the backends write them. */
export function sourceTexts(items: SourceInterval[], family: Family): string[] {
  return mergeIntervals(items.filter((i) => i.family === family)).map(formatInterval);
}

/** A name for a source set: what nft and ipset take as part of a set name, short enough for both. */
export function sourceSetProblem(name: string): string | undefined {
  if (!/^[A-Za-z0-9_]{1,20}$/.test(name)) return "A set name is 1 to 20 letters, digits or underscores";
  return undefined;
}

/** The intervals of `have` less every address of `take` (both of any family), merged. */
export function subtractIntervals(have: SourceInterval[], take: SourceInterval[]): SourceInterval[] {
  let out = mergeIntervals(have);
  for (const t of take) {
    out = out.flatMap((i) => {
      if (i.family !== t.family || t.last < i.first || t.first > i.last) return [i];
      const parts: SourceInterval[] = [];
      if (t.first > i.first) parts.push({ family: i.family, first: i.first, last: t.first - 1n });
      if (t.last < i.last) parts.push({ family: i.family, first: t.last + 1n, last: i.last });
      return parts;
    });
  }
  return out;
}

/** An interval as the fewest networks that cover exactly it (an ipset of networks takes no IPv6 range). */
export function intervalNetworks(i: SourceInterval): string[] {
  const bits = i.family === 4 ? 32 : 128;
  const out: string[] = [];
  for (let first = i.first; first <= i.last;) {
    // The largest aligned block that starts at `first` and ends within the interval.
    let size = first === 0n ? 1n << BigInt(bits) : first & -first;
    while (first + size - 1n > i.last) size >>= 1n;
    out.push(formatInterval({ family: i.family, first, last: first + size - 1n }));
    first += size;
  }
  return out;
}
