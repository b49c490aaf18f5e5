/** nft's JSON listing (`nft -j list ...`): its objects, read by the nftables backend and by the gates of others. */

/** One object of `nft -j` output: its kind (table, chain, rule, ...) and its fields. */
export interface NftItem {
  kind: string;
  v: Record<string, unknown>;
}

/** The objects of one `nft -j list ...` document; throws on text that is not one. */
export function nftItems(text: string): NftItem[] {
  if (text.trim() === "") return [];
  const doc = JSON.parse(text) as { nftables?: Record<string, Record<string, unknown>>[] };
  const out: NftItem[] = [];
  for (const item of doc.nftables ?? []) {
    const [kind, v] = Object.entries(item)[0] ?? [];
    if (kind && v) out.push({ kind, v });
  }
  return out;
}
