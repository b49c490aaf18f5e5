/** The JSON Schema of hooks.jsonc, built from the tables the validator reads, so the two cannot drift. */

import { ENTRY_FIELDS } from "./entry.ts";
import { RANGE_FIELDS, REQUIRED_RANGE_FIELDS } from "./ports.ts";
import { BACKENDS, SCHEMA_KEY, SETTINGS_KEY } from "./model.ts";
import { XML_RULE_FIELDS } from "./policy.ts";
import { PROTOCOLS } from "../system/address.ts";

const port = { type: "integer", minimum: 1, maximum: 65535 };

const portList = {
  type: "array",
  items: { oneOf: [port, { type: "array", items: port, minItems: 2, maxItems: 2 }] },
};

/** One allowed source, or a non-empty list of them (config/sources.ts says what an item may be). */
const sources = { oneOf: [{ type: "string" }, { type: "array", items: { type: "string" }, minItems: 1 }] };

/** Sub-schemas for the fields whose shape is more than their type. */
const SHAPES: Partial<Record<keyof typeof ENTRY_FIELDS, object>> = {
  source_ip: sources,
  source_ipv6: sources,
  source_set: { type: "string", pattern: "^[A-Za-z0-9_]{1,20}$" },
  port_map: {
    type: "object",
    properties: { tcp: portList, udp: portList, icmp: { ...portList, deprecated: true } },
    additionalProperties: false,
  },
  port_range: {
    type: "array",
    items: {
      type: "object",
      required: [...REQUIRED_RANGE_FIELDS],
      additionalProperties: false,
      properties: {
        init_port: { ...port, description: RANGE_FIELDS.init_port.description },
        ports_num: { type: "integer", minimum: 1, description: RANGE_FIELDS.ports_num.description },
        protocol: { enum: ["tcp", "udp", "icmp"], description: RANGE_FIELDS.protocol.description },
        to_port: { ...port, description: RANGE_FIELDS.to_port.description },
      },
    },
  },
};

const networks = { type: "array", items: { type: "string" } };

/** One rule of `"/settings".xml_forwards`, its fields described as the validator lists them. */
const xmlRule = {
  type: "object",
  required: ["domains"],
  additionalProperties: false,
  properties: Object.fromEntries(
    Object.entries(
      {
        domains: { oneOf: [{ type: "string" }, { type: "array", items: { type: "string" }, minItems: 1 }] },
        enabled: { type: "boolean" },
        addresses: networks,
        targets: networks,
        protocols: { type: "array", items: { enum: [...PROTOCOLS] } },
        ports: portList,
        host_ports: { type: "boolean" },
        snat: { type: "boolean" },
        all_ports: { type: "boolean" },
        any_address: { type: "boolean" },
      } satisfies Record<keyof typeof XML_RULE_FIELDS, object>,
    ).map((
      [name, shape],
    ) => [name, { ...shape, description: XML_RULE_FIELDS[name as keyof typeof XML_RULE_FIELDS] }]),
  ),
};

/** Builds the schema object. */
export function configSchema(): Record<string, unknown> {
  const properties: Record<string, object> = {};
  for (const [name, field] of Object.entries(ENTRY_FIELDS)) {
    properties[name] = {
      ...(SHAPES[name as keyof typeof ENTRY_FIELDS] ?? { type: field.type }),
      description: field.description,
    };
  }
  const entry = { type: "object", additionalProperties: false, properties };
  return {
    $schema: "http://json-schema.org/draft-07/schema#",
    title: "libvirt-hook-qemu config (hooks.jsonc)",
    description: "Port forwards for libvirt guests, keyed by domain name.",
    type: "object",
    properties: {
      [SCHEMA_KEY]: { type: "string" },
      [SETTINGS_KEY]: {
        type: "object",
        additionalProperties: false,
        properties: {
          backend: { enum: [...BACKENDS], description: "The firewall backend; auto chooses." },
          accept_in: {
            type: "array",
            items: {
              type: "string",
              pattern: "^(ip|ip6|inet) [A-Za-z_][A-Za-z0-9_.-]* [A-Za-z_][A-Za-z0-9_.-]*$",
            },
            description:
              'nftables chains at the forward hook handed to us ("<family> <table> <chain>"): our accept goes first in each.',
          },
          host_addresses: {
            type: "array",
            items: { type: "string" },
            description:
              "Addresses or networks that are this host's though no interface holds them (routed to it, floating, " +
              "or coming later): a public address must be the host's.",
          },
          xml_forwards: {
            description:
              "What a guest's XML may declare: false (nothing), true (the defaults), or rules per domain " +
              "name pattern, the first that matches deciding.",
            oneOf: [{ type: "boolean" }, { type: "array", items: xmlRule }],
          },
        },
      },
    },
    additionalProperties: {
      oneOf: [{ $ref: "#/definitions/entry" }, {
        type: "array",
        minItems: 1,
        items: { $ref: "#/definitions/entry" },
      }],
    },
    definitions: { entry },
  };
}

if (import.meta.main) console.log(JSON.stringify(configSchema(), null, 2));
