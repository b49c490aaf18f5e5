/**
 * What a guest's XML may ask for: whoever may edit one guest (libvirt's domain:write, a panel's tenant) declares
 * these forwards, and the hook applies them with root's power. By default the XML may forward only to the guest's
 * own addresses, from the host's own non-loopback addresses, on ports the host itself leaves free; the
 * administrator's `"/settings".xml_forwards` narrows or widens that per domain (config/policy.ts).
 */

import type { Diagnostic, Entry, PortSpec, Target } from "../config/model.ts";
import { type EntryPlace, type MetadataForwards, type Position, xmlProblem } from "../config/metadata.ts";
import {
  allowedBy,
  inNetworks,
  isHostAddress,
  isLoopback,
  portsAllowed,
  type XmlRule,
} from "../config/policy.ts";
import { type Family, parseAddress, publicAddress } from "../system/address.ts";
import { type Listener, listenerAt } from "../system/host.ts";

/** What the policy is checked against: the domain's rule and the host as it is. */
export interface PolicyView {
  rule: XmlRule;
  /** The addresses this host's interfaces hold; undefined where unknown (then only loopback is refused). */
  addresses: string[] | undefined;
  /** `"/settings".host_addresses`. */
  declared: string[];
  /** The host's listening sockets, read when an entry needs them. */
  listeners: () => Listener[];
  defaultPublicIp: Partial<Record<Family, string>>;
}

/**
 * Each thing the XML's entries ask for that the policy does not allow, positioned where it is asked for.
 * `own(entry, target)`: the addresses found for the guest's interface of that entry (reservation or lease), which
 * a `guest` attribute must be one of.
 */
export function policyProblems(
  domain: string,
  md: MetadataForwards,
  { view, file, own }: { view: PolicyView; file: string; own: (entry: Entry, target: Target) => string[] },
): Diagnostic[] {
  const out: Diagnostic[] = [];
  const { rule } = view;
  const problem = (at: Position, message: string, value?: string) =>
    out.push(xmlProblem({ file, domain }, at, { message, value }));
  md.entries.forEach((entry, i) => {
    const place = md.places[i]!;
    const attribute = (name: string): Position | undefined => {
      const a = place.attributes.get(name);
      return a && { line: a.line, column: a.column, path: `${entry.path}/@${name}` };
    };
    for (
      const [flag, name, setting] of [
        [entry.snat === true, "snat", "snat"],
        [entry.ports.some((p) => p.all), "allPorts", "all_ports"],
      ] as const
    ) {
      if (flag && !(setting === "snat" ? rule.snat : rule.allPorts)) {
        problem(
          attribute(name)!,
          `${name}="yes" takes a whole public address, which a guest's XML may not by default ` +
            `(${allowedBy(rule, `"${setting}": true`)})`,
          "yes",
        );
      }
    }
    for (const t of entry.targets) {
      const publicText = t.publicIp ?? view.defaultPublicIp[t.family];
      const publicAt = attribute("address") ?? place.element;
      const pub = publicText === undefined ? undefined : publicAddress(publicText, t.family);
      if (pub?.text === "*") {
        // Every address of the host at once, those to come included: the administrator's to grant.
        if (!rule.anyAddress) {
          problem(
            publicAt,
            'address="*" takes the port on every address of this host, which a guest\'s XML may not by default ' +
              `(${allowedBy(rule, '"any_address": true')})`,
            "*",
          );
        }
      } else if (pub) {
        const why = addressProblem(pub.text, { view, explicit: t.publicIp !== undefined });
        if (why) problem(publicAt, why, t.publicIp);
      }
      if (t.privateIp !== undefined) {
        const guest = parseAddress(t.privateIp)!;
        const found = own(entry, t);
        if (!found.includes(guest.text) && !inNetworks(guest, rule.targets)) {
          problem(
            attribute("guest")!,
            `${guest.text} is not this guest's address (its network's reservations and leases give ${
              found.length === 0 ? "none yet" : found.join(", ")
            }): a guest's XML may forward only to the guest itself (drop guest to have its address found, or ${
              allowedBy(rule, `"targets": ["${guest.text}"]`)
            })`,
            t.privateIp,
          );
        }
      }
      for (const p of entry.ports) {
        portProblems(p, { place, attribute, rule, problem, pub, listeners: view.listeners });
      }
    }
  });
  return dedupe(out);
}

/** Why a guest's XML may not use a public address, if it may not: loopback, not the host's, not the rule's. */
function addressProblem(text: string, { view, explicit }: { view: PolicyView; explicit: boolean }) {
  const addr = parseAddress(text)!;
  const { rule } = view;
  if (isLoopback(addr)) {
    return `${text} is a loopback address: a forward there would take the host's own services on it; ` +
      "never allowed from a guest's XML";
  }
  if (rule.addresses !== undefined) {
    if (inNetworks(addr, rule.addresses)) return undefined;
    return `${explicit ? "" : "The host's default address "}${text} is not among the public addresses this ` +
      `guest's XML may use (${rule.addresses.join(", ")}) (${allowedBy(rule, '"addresses"')})`;
  }
  if (isHostAddress(addr, view.addresses, view.declared)) return undefined;
  return `${text} is not an address of this host: its forward would capture the host's and the guests' own ` +
    `connections to it (${
      allowedBy(rule, `"addresses": ["${text}"]`)
    }, or list it in "/settings".host_addresses ` +
    "if it is routed to this host)";
}

/** The problems of one run of public ports: its protocol, its ports, and a port the host itself listens on. */
function portProblems(
  p: PortSpec,
  { place, attribute, rule, problem, pub, listeners }: {
    place: EntryPlace;
    attribute: (name: string) => Position | undefined;
    rule: XmlRule;
    problem: (at: Position, message: string, value?: string) => void;
    pub: ReturnType<typeof parseAddress>;
    listeners: () => Listener[];
  },
) {
  const at = p.all ? attribute("allPorts")! : place.ranges.get(p) ?? place.element;
  const last = p.publicPort + p.count - 1;
  const ports = p.count === 1 ? `${p.publicPort}` : `${p.publicPort}-${last}`;
  if (!rule.protocols.includes(p.protocol)) {
    problem(
      p.all ? at : attribute("proto") ?? at,
      `Protocol ${p.protocol} is not one this guest's XML may forward (${
        allowedBy(rule, `"protocols": [${[...rule.protocols, p.protocol].map((x) => `"${x}"`).join(", ")}]`)
      })`,
      p.protocol,
    );
  }
  if (!p.all && !portsAllowed(rule, p.publicPort, last)) {
    problem(
      at,
      `Public port ${ports} is outside the ports this guest's XML may claim (${
        rule.ports!.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(", ")
      }) (${allowedBy(rule, '"ports"')})`,
      ports,
    );
  }
  if (rule.hostPorts || !pub) return;
  const l = listenerAt(listeners(), { protocol: p.protocol, address: pub, first: p.publicPort, last });
  if (!l) return;
  const show = (ip: string, port: number | string) => `${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
  problem(
    at,
    `Public ${p.protocol} ${show(pub.text, ports)} takes a port the host itself listens on (${
      show(l.address, l.port)
    }): a guest's XML may not take it from the host (${allowedBy(rule, '"host_ports": true')})`,
    ports,
  );
}

/** One problem per place and message: an entry of two targets, or two protocols, says a thing once. */
function dedupe(list: Diagnostic[]): Diagnostic[] {
  const seen = new Set<string>();
  return list.filter((d) => {
    const key = `${d.line}:${d.column}:${d.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
