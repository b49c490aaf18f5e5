/** What makes a rule, chain or table ours: names and comments derived from the domain, the same in both backends. */

/** Every chain we create starts with this; nothing else is ever touched. */
export const CHAIN_PREFIX = "LVH-";

/** Our rules carry a comment `libvirt-hook-qemu:<format version>:<domain>`. */
export const COMMENT_TAG = "libvirt-hook-qemu:";

/**
 * The administrator's chain in iptables' filter table (each family), Docker's DOCKER-USER for our forwards: every
 * forwarded connection of ours passes it before our accepts (each domain's FWD chain jumps to it first), so a ban
 * there (fail2ban's `chain = LVH-USER`) stops it. We create it where it is missing and never change its rules.
 */
export const USER_CHAIN = "LVH-USER";

/**
 * Our gate in iptables' filter table (each family): FORWARD holds one rule of ours, `-m connlabel --label 127 -j
 * LVH-FORWARD`, so only the connections our DNAT labelled (see CT_LABEL) enter this chain, which holds each domain's
 * jump to its FWD chain (the jump to USER_CHAIN, then the accept). Every other packet forwarded on the host passes
 * one rule of ours, however many domains and forwards (issue 25). It is there while it holds a domain's jump: the
 * removal that takes the last one takes the gate with it.
 */
export const GATE_CHAIN = "LVH-FORWARD";

/**
 * The administrator's base chain in our nftables table (`inet libvirt_hook_qemu user_forward`), at the forward hook
 * ahead of every accept (libvirt's, iptables-nft's and firewalld's sit at priority filter or later): a drop there
 * is final whatever accepts later. Declared with `add` (which never changes a chain that is there) by every batch
 * that adds to our table; our table is deleted only while this chain holds nothing.
 */
export const NFT_USER_CHAIN = "user_forward";

/** How NFT_USER_CHAIN hooks: the same words fail2ban's nftables action must be given (`chain_priority = -10`). */
export const NFT_USER_HOOK = "type filter hook forward priority -10; policy accept;";

/** The version of the rule layout, written into every comment. */
export const FORMAT_VERSION = 1;

/**
 * The comment of our accepts in libvirt's nftables chains that serve every domain our table translates: one per
 * bridge, whatever the number of domains (issue 25). No domain's comment can be this one (a name is never empty).
 */
export const SHARED_ACCEPT = `${COMMENT_TAG}${FORMAT_VERSION}:accept`;

/**
 * Marks a domain known only by its hash: a rule whose comment could not hold the name. NUL can be in no name
 * libvirt passes (an argument cannot hold it, nor can XML), so the mark is never a real name.
 */
const HASH_ONLY = "\0";

/**
 * A short, stable hash of a domain name, used in chain names: 12 hex digits (48 bits) of FNV-1a 64 over its UTF-8
 * bytes. Names only need to be told apart, not kept secret; a plain hash keeps node:crypto (and the ~13 ms it
 * costs to load) off the hook's path. A domain known only by its hash (see hashOnly) has that hash.
 */
export function domainHash(domain: string): string {
  if (domain.startsWith(HASH_ONLY)) return domain.slice(HASH_ONLY.length);
  let hash = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(domain)) {
    hash = ((hash ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash.toString(16).padStart(16, "0").slice(0, 12);
}

/** The domain whose name is lost but whose hash is known, as the other functions here take a domain. */
export function hashOnly(hash: string): string {
  return `${HASH_ONLY}${hash}`;
}

/** Whether a domain is known only by its hash (see hashOnly). */
export function isHashOnly(domain: string): boolean {
  return domain.startsWith(HASH_ONLY);
}

/** A domain as people read it: its name, or `#<hash>` where only the hash is known. */
export function domainLabel(domain: string): string {
  return isHashOnly(domain) ? `#${domainHash(domain)}` : domain;
}

/** How a domain's counting chain ends (see countingParts in iptables.ts): `LVH-<hash>-CNT`. */
export const COUNT_SUFFIX = "-CNT";

/** The chains one domain owns: `LVH-<hash>-DNAT` etc., 21 characters, under iptables' 28. */
export function chainNames(domain: string): { dnat: string; snat: string; fwd: string; cnt: string } {
  const h = domainHash(domain);
  return {
    dnat: `${CHAIN_PREFIX}${h}-DNAT`,
    snat: `${CHAIN_PREFIX}${h}-SNAT`,
    fwd: `${CHAIN_PREFIX}${h}-FWD`,
    cnt: `${CHAIN_PREFIX}${h}${COUNT_SUFFIX}`,
  };
}

/**
 * The longest name, percent-encoded, that our comments carry: nftables keeps at most 128 bytes of a comment, and
 * ours is `libvirt-hook-qemu:1:<name>:accept` at most (20 + 100 + 7). A longer name is carried as `#<hash>`:
 * ownership always goes by the hash, never by a name a comment may have had to drop.
 */
export const MAX_COMMENT_NAME = 100;

/** The comment on every rule of a domain; odd characters are percent-encoded so it needs no quoting. */
export function ruleComment(domain: string): string {
  return `${COMMENT_TAG}${FORMAT_VERSION}:${commentName(domain)}`;
}

/** The name part of our comment: the percent-encoded name, or `#<hash>` where it would not fit. */
function commentName(domain: string): string {
  if (isHashOnly(domain)) return `#${domainHash(domain)}`;
  const name = domain.replace(
    /[^A-Za-z0-9._~+@=,-]/gu,
    (c) =>
      [...new TextEncoder().encode(c)].map((b) => `%${b.toString(16).toUpperCase().padStart(2, "0")}`).join(
        "",
      ),
  );
  return name.length > MAX_COMMENT_NAME ? `#${domainHash(domain)}` : name;
}

/**
 * The domain as our comments carry it, so that what is read back compares equal: the name itself, or, for a name
 * too long for a comment, the domain known only by its hash.
 */
export function carriedDomain(domain: string): string {
  return commentName(domain).startsWith("#") ? hashOnly(domainHash(domain)) : domain;
}

/**
 * Decodes the domain named in one of our comments (undefined when the comment is not ours): its name, or the
 * domain known only by its hash (`#<hash>`, see hashOnly). A `#` of a real name is always percent-encoded.
 */
export function commentDomain(comment: string): string | undefined {
  if (!comment.startsWith(COMMENT_TAG)) return undefined;
  const rest = comment.slice(COMMENT_TAG.length);
  const name = rest.slice(rest.indexOf(":") + 1);
  const hashed = /^#([0-9a-f]{12})$/.exec(name);
  if (hashed) return hashOnly(hashed[1]!);
  try {
    return decodeURIComponent(name);
  } catch {
    return name;
  }
}

/** Our table: one `inet` table holds both families, so one `nft -f` changes both atomically. */
export const NFT_TABLE = "libvirt_hook_qemu";

/**
 * The conntrack label bit our DNAT sets on every connection it translates, in both backends: iptables' FORWARD
 * then accepts them all with one rule per domain, whatever the number of forwards (issue 25). A label, not a ct
 * mark: other software saves whole packet marks into the ct mark (CONNMARK --save-mark); nobody we know sets
 * label bits at the netfilter hooks (the highest of the kernel's 128).
 */
export const CT_LABEL = 127;

/**
 * The conntrack label bit our nftables DNAT sets beside CT_LABEL on a connection a guest opens to a forward (its
 * source is in the forward's hairpin network): one shared rule of our table masquerades exactly those (see
 * HAIRPIN_CHAIN), so the hairpin is decided where the DNAT is, found by one lookup, and no connection walks a rule
 * per domain on its way out. Never set by anything else we know of, like CT_LABEL.
 */
export const HAIRPIN_LABEL = 126;

/** The gate's rule in FORWARD, as iptables-restore takes it and iptables-save prints it (see GATE_CHAIN). */
export const GATE_JUMP = `-m connlabel --label ${CT_LABEL} -j ${GATE_CHAIN}`;

/** libvirt's nftables table (libvirt >= 10.4 with its nftables backend), one per family. */
export const LIBVIRT_TABLE = "libvirt_network";

/** The chain of libvirt's table that rejects new connections to guests. */
export const LIBVIRT_CHAIN = "guest_input";
