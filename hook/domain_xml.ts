/**
 * What we read from libvirt's domain XML, with the XML parser (system/xml.ts; `await loadXml()` first): the
 * guest's network interfaces, and which hook an XML on stdin is for.
 */

import { attr, child, childrenNamed, loadXml, parseXml, rootName, type XmlElement } from "../system/xml.ts";

/** One network interface of the guest: its MAC, its libvirt network, its bridge and its tap device, where known. */
export interface GuestInterface {
  mac?: string;
  network?: string;
  bridge?: string;
  device?: string;
}

/** The `<domain>` of a domain XML, or of libvirt's status file (`<domstatus>` around it). */
export function domainElement(root: XmlElement): XmlElement | undefined {
  if (root.local === "domain") return root;
  if (root.local === "domstatus") return child(root, "domain");
  return undefined;
}

/**
 * The guest's `<interface>` elements, in order. The bridge is `<source bridge=...>` (the XML libvirt passes at
 * start) or `<actual><source bridge=...>` (the running guest's status file).
 */
export function interfacesOf(root: XmlElement): GuestInterface[] {
  const devices = child(domainElement(root) ?? root, "devices");
  return (devices ? childrenNamed(devices, "interface") : []).map((i) => {
    const source = child(i, "source");
    const mac = attr(child(i, "mac") ?? i, "address")?.toLowerCase();
    const network = source && attr(source, "network");
    const actual = child(i, "actual");
    const bridge = (source && attr(source, "bridge")) ??
      (actual && attr(child(actual, "source") ?? actual, "bridge"));
    const device = attr(child(i, "target") ?? i, "dev");
    return {
      ...(mac ? { mac } : {}),
      ...(network ? { network } : {}),
      ...(bridge ? { bridge } : {}),
      ...(device ? { device } : {}),
    };
  });
}

/** The interfaces that name a tap device (`<target dev=...>`); none where the text is no XML. */
export function guestInterfaces(xml: string): (GuestInterface & { device: string })[] {
  try {
    return interfacesOf(parseXml(xml)).filter((i): i is GuestInterface & { device: string } =>
      i.device !== undefined
    );
  } catch {
    return [];
  }
}

/**
 * Tells a domain's XML (qemu hook) from a network's `<hookData>` (network hook), reading only its root. libvirt
 * writes either with its root element first: that case is told by the first bytes, without loading the parser
 * (~4 ms of every start); anything else (a declaration, a comment, another root) goes to the parser.
 */
export async function xmlKind(xml: string): Promise<"domain" | "network" | "unknown"> {
  const root = /^\s*<(domain|hookData)[\s>]/.exec(xml)?.[1] ?? (await loadXml(), rootName(xml));
  if (root === "domain") return "domain";
  if (root === "hookData") return "network";
  return "unknown";
}
