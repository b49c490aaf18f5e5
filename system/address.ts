/** IP address parsing and canonical form (RFC 5952 for IPv6), without any I/O. */

/** An IP address family: 4 or 6. */
export type Family = 4 | 6;

/** A parsed address: its family, canonical text and value as a big integer. */
export interface Address {
  family: Family;
  text: string;
  value: bigint;
}

/**
 * A forward's public address: an address, or `"*"` (every local address of the host in `family`, loopback
 * excluded) as an Address whose text is `*`; undefined when it is neither.
 */
export function publicAddress(text: string, family: Family): Address | undefined {
  return text === "*" ? { family, text, value: 0n } : parseAddress(text);
}

/** Parses an IPv4 or IPv6 address (no prefix, no zone); returns undefined when it is not one. */
export function parseAddress(input: string): Address | undefined {
  return input.includes(":") ? parseIPv6(input) : parseIPv4(input);
}

function parseIPv4(input: string): Address | undefined {
  const parts = input.split(".");
  if (parts.length !== 4) return undefined;
  let value = 0n;
  for (const part of parts) {
    // Leading zeros are refused: "010" means 8 to some tools and 10 to others.
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return undefined;
    const n = Number(part);
    if (n > 255) return undefined;
    value = (value << 8n) | BigInt(n);
  }
  return { family: 4, text: parts.join("."), value };
}

function parseIPv6(input: string): Address | undefined {
  let text = input.toLowerCase();
  const lastColon = text.lastIndexOf(":");
  if (text.slice(lastColon + 1).includes(".")) {
    // An embedded IPv4 tail (::ffff:192.0.2.1) becomes its two 16-bit groups.
    const v4 = parseIPv4(text.slice(lastColon + 1));
    if (!v4) return undefined;
    const hi = (v4.value >> 16n).toString(16), lo = (v4.value & 0xffffn).toString(16);
    text = `${text.slice(0, lastColon + 1)}${hi}:${lo}`;
  }
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groups = halves.map((h) => (h === "" ? [] : h.split(":")));
  const words: number[][] = [];
  for (const list of groups) {
    if (!list.every((g) => /^[0-9a-f]{1,4}$/.test(g))) return undefined;
    words.push(list.map((g) => parseInt(g, 16)));
  }
  const [head = [], tail = []] = words;
  const count = head.length + tail.length;
  if (halves.length === 2 ? count > 7 : count !== 8) return undefined;
  const full = [...head, ...Array<number>(8 - count).fill(0), ...tail];
  let value = 0n;
  for (const w of full) value = (value << 16n) | BigInt(w);
  return { family: 6, text: formatIPv6(value), value };
}

/** Formats a 128-bit value as RFC 5952 text: lower case, longest zero run (of 2+) compressed. */
function formatIPv6(value: bigint): string {
  const words = Array.from({ length: 8 }, (_, i) => Number((value >> BigInt(112 - 16 * i)) & 0xffffn));
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestLen < 2) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

/** Formats a value of the given family as canonical text. */
export function formatAddress(family: Family, value: bigint): string {
  if (family === 6) return formatIPv6(value);
  return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join(".");
}

/** A network: an address with a prefix length, its host bits cleared. */
export interface Network {
  family: Family;
  value: bigint;
  prefix: number;
}

/** Renders a network as `address/prefix`. */
export function formatNetwork(net: Network): string {
  return `${formatAddress(net.family, net.value)}/${net.prefix}`;
}

/** Builds the network of `prefix` bits that holds `addr`. */
export function networkOf(addr: Address, prefix: number): Network {
  const bits = addr.family === 4 ? 32 : 128;
  const mask = ((1n << BigInt(bits)) - 1n) ^ ((1n << BigInt(bits - prefix)) - 1n);
  return { family: addr.family, value: addr.value & mask, prefix };
}

/** The protocols a forward can use: DNAT by port needs one of these. */
export const PROTOCOLS = ["tcp", "udp"] as const;

/** A forwardable protocol. */
export type Protocol = typeof PROTOCOLS[number];
