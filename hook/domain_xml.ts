/** Reads the little we need from libvirt's domain XML: the guest's tap devices and their bridges. */

/** One network interface of the guest: its tap device and the bridge it is a port of, when known. */
export interface GuestInterface {
  device: string;
  bridge?: string;
}

/** Lists the `<interface>` elements that name a tap device (`<target dev=...>`). */
export function guestInterfaces(xml: string): GuestInterface[] {
  const out: GuestInterface[] = [];
  for (const match of xml.matchAll(/<interface\b[^>]*>([\s\S]*?)<\/interface>/g)) {
    const body = match[1] ?? "";
    const device = /<target\b[^>]*\bdev=(['"])([^'"]+)\1/.exec(body)?.[2];
    if (!device) continue;
    const bridge = /<source\b[^>]*\bbridge=(['"])([^'"]+)\1/.exec(body)?.[2];
    out.push({ device: unescapeXml(device), ...(bridge ? { bridge: unescapeXml(bridge) } : {}) });
  }
  return out;
}

/** Tells a domain's XML (qemu hook) from a network's `<hookData>` (network hook). */
export function xmlKind(xml: string): "domain" | "network" | "unknown" {
  const root = /<\s*([A-Za-z]+)/.exec(xml.replace(/<\?[\s\S]*?\?>|<!--[\s\S]*?-->/g, ""))?.[1];
  if (root === "domain") return "domain";
  if (root === "hookData") return "network";
  return "unknown";
}

function unescapeXml(s: string): string {
  return s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&apos;/g, "'")
    .replace(/&amp;/g, "&");
}
