/** Progress's number and time formats, as the ETA and elapsed times print them. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { fmtTime } from "../../src/util/progress.js";

test("fmtTime carries a second that rounds up into the minute (1199.6 s read \"19m60s\", 59.97 s \"60.0s\")", () => {
  assert.equal(fmtTime(12.34), "12.3s");
  assert.equal(fmtTime(59.97), "1m0s");
  assert.equal(fmtTime(61), "1m1s");
  assert.equal(fmtTime(1199.6), "20m0s");
  assert.equal(fmtTime(3599.6), "1h0m");
  assert.equal(fmtTime(7260), "2h1m");
  assert.equal(fmtTime(Infinity), "?");
});
