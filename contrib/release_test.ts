/** `deno task release`: which binaries with which runtime, their SHA-256 sums, and (where a denort is) the build. */

import assert from "node:assert/strict";
import { releasePlan, sha256Sums } from "./release.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("releasePlan() builds both architectures, each with the denort named for it", async (t) => {
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  await t.step("nothing named: Deno downloads each runtime", () => {
    assert.deepEqual(releasePlan({ env: env({}), hostArch: "x86_64", version: "1.2.3" }), [
      {
        arch: "x86_64",
        triple: "x86_64-unknown-linux-gnu",
        output: "dist/libvirt-hook-qemu-1.2.3-x86_64-linux",
      },
      {
        arch: "aarch64",
        triple: "aarch64-unknown-linux-gnu",
        output: "dist/libvirt-hook-qemu-1.2.3-aarch64-linux",
      },
    ]);
  });
  await t.step("DENORT_BIN serves this machine's architecture only; a per-target variable wins", () => {
    const plan = releasePlan({
      env: env({ DENORT_BIN: "/opt/denort", DENORT_BIN_AARCH64: "/opt/denort-arm" }),
      hostArch: "x86_64",
      version: "1.2.3",
    });
    assert.deepEqual(plan.map((b) => [b.arch, b.denort]), [["x86_64", "/opt/denort"], [
      "aarch64",
      "/opt/denort-arm",
    ]]);
    const onArm = releasePlan({
      env: env({ DENORT_BIN: "/opt/denort" }),
      hostArch: "aarch64",
      arches: ["x86_64"],
    });
    assert.deepEqual(onArm.map((b) => [b.arch, b.denort]), [["x86_64", undefined]]);
  });
});

Deno.test("sha256Sums() writes what sha256sum -c verifies", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const files = [
      { name: "a-x86_64-linux", bytes: new TextEncoder().encode("abc") },
      { name: "b-aarch64-linux", bytes: new Uint8Array(0) },
    ];
    const sums = await sha256Sums(files);
    assert.equal(
      sums,
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  a-x86_64-linux\n" +
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  b-aarch64-linux\n",
    );
    for (const f of files) await Deno.writeFile(`${dir}/${f.name}`, f.bytes);
    await Deno.writeTextFile(`${dir}/SHA256SUMS`, sums);
    const check = await new Deno.Command("sha256sum", {
      args: ["-c", "SHA256SUMS"],
      cwd: dir,
      stdout: "piped",
    })
      .output().catch(() => undefined);
    if (check === undefined) {
      console.log("sha256sum is not installed: the sums are checked against known digests only");
    } else assert.equal(check.code, 0, new TextDecoder().decode(check.stdout));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const denorts = ["DENORT_BIN_X86_64", "DENORT_BIN_AARCH64", "DENORT_BIN"].filter((v) => Deno.env.get(v));
const noDenort = denorts.length === 0;
if (noDenort) {
  console.log(
    "Skipping the release build: no denort here (DENORT_BIN, DENORT_BIN_X86_64, DENORT_BIN_AARCH64 unset, and " +
      "deno compile cannot download one)",
  );
}

Deno.test({
  name: "deno task release builds the binary of each architecture a denort is given for, with its sum",
  ignore: noDenort,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const arch = Deno.env.get("DENORT_BIN_AARCH64") ? "aarch64" : "x86_64";
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "release", arch],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const check = await new Deno.Command("sha256sum", { args: ["-c", "SHA256SUMS"], cwd: `${ROOT}dist` })
      .output();
    assert.equal(check.code, 0);
    const binary = `${ROOT}dist/${(await Deno.readTextFile(`${ROOT}dist/SHA256SUMS`)).trim().split("  ")[1]}`;
    if (arch === Deno.build.arch) {
      const v = await new Deno.Command(binary, { args: ["--version"], stdout: "piped" }).output();
      assert.match(new TextDecoder().decode(v.stdout), /^libvirt-hook-qemu \d/);
    }
  },
});

Deno.test("deno task release says which target could not be built, and with what, and exits 1", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "release", "aarch64"],
    cwd: ROOT,
    env: { DENORT_BIN_AARCH64: "/nonexistent/denort" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 1, stderr);
  assert.match(stderr, /^aarch64: deno compile failed \(.+\); with DENORT_BIN=\/nonexistent\/denort$/m);
});
