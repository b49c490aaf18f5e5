/** What libvirt says about its networks' firewall backend. */

import { parseNetworkConf } from "./libvirt.ts";
import assert from "node:assert/strict";

Deno.test("parseNetworkConf() reads libvirt's firewall_backend", () => {
  assert.equal(parseNetworkConf('# comment\nfirewall_backend = "nftables"\n'), "nftables");
  assert.equal(parseNetworkConf('#firewall_backend = "iptables"\n'), undefined);
});
