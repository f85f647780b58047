import { test } from "node:test";
import assert from "node:assert/strict";
import { hbmBound } from "../../bench/hbm.js";

test("hbmBound: each card's own peak bandwidth from bench/hbm.json (GH200 before H200, the H100's variants apart), the H200's for an unknown card (said so), MHA2MLA_HBM_TBPS over all", () => {
  const tbps = (info: string) => hbmBound(info).bytesPerS / 1e12;
  assert.equal(tbps("NVIDIA H200, 143771 MiB, sm_90, driver CUDA 13.0, runtime 13.0"), 4.8);
  assert.equal(tbps("NVIDIA H100 80GB HBM3, 81079 MiB, sm_90, driver CUDA 13.0, runtime 13.0"), 3.35);
  assert.equal(tbps("NVIDIA H100 PCIe, 81079 MiB"), 2.0);
  assert.equal(tbps("NVIDIA GH200 480GB, 97871 MiB"), 4.0);
  assert.equal(tbps("NVIDIA A100-SXM4-80GB, 81050 MiB"), 2.039);
  const unknown = hbmBound("NVIDIA RTX 6000 Ada Generation, 48 GiB");
  assert.equal(unknown.bytesPerS, 4.8e12);
  assert.match(unknown.label, /assumed: NVIDIA RTX 6000 Ada Generation is not in bench\/hbm\.json/);
  process.env["MHA2MLA_HBM_TBPS"] = "3";
  try {
    assert.deepEqual(hbmBound("NVIDIA H200, 143771 MiB"), { bytesPerS: 3e12, label: "3 TB/s, MHA2MLA_HBM_TBPS" });
  } finally {
    delete process.env["MHA2MLA_HBM_TBPS"];
  }
});
