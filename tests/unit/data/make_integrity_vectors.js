// Regenerates integrity-vectors-node.jsonl: `node make_integrity_vectors.js > integrity-vectors-node.jsonl`.
// An independent implementation of the original producers' crypto.ts (reference section 12),
// in Node.js, over seeded random events: awkward strings (quotes, backslashes, control
// characters, U+2028, astral characters), empty and missing fields (JavaScript `||`), the same
// instant written in different timestamp formats, and non-string values.
"use strict";
const crypto = require("crypto");

let seed = 20261130;
function rand() {
  // mulberry32: small, seeded, reproducible
  seed |= 0;
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];

const ALPHABET = [
  "a", "Z", "0", " ", "-", "_", ".", ":", "|", '"', "\\", "/", "\n", "\r", "\t", "\b", "\f",
  "\u0000", "\u0001", "\u001f", "\u007f", "\u0085", "\u00a0", "\u2028", "\u2029", "é", "漢",
  "ß", "\u{1F600}", "\u{10FFFF}", "<", ">", "&", "'", "\ufeff",
];
function text(max) {
  const n = Math.floor(rand() * max);
  let s = "";
  for (let i = 0; i < n; i++) s += pick(ALPHABET);
  return s;
}
const STAMPS = [
  "2026-03-10T10:00:00Z",
  "2026-03-10T10:00:00.000Z",
  "2026-03-10T10:00:00.000000Z",
  "2026-03-10T11:00:00+01:00",
  "2026-03-10T10:00:00+00:00",
  "2026-03-10T10:00:00",
  "2026-03-10 10:00:00Z",
  "2026-03-10t10:00:00z",
];
const ODD_VALUES = [0, 1, -1, 0.1, 1e21, 1e-7, 123456789012, 2 ** 60, -0.5, true, false, null, [], {}, ["x", 1], { b: 1, a: "é" }, NaN];
const CRITICAL = [
  "timestamp", "action", "status", "principalId", "organizationId",
  "targetResourceType", "targetResourceId", "outcomeDescription",
];

function value(name) {
  const r = rand();
  if (r < 0.1) return undefined;
  if (r < 0.2) return "";
  if (r < 0.25 && name !== "timestamp") return pick(ODD_VALUES);
  if (name === "timestamp") return pick(STAMPS);
  if (name === "status") return pick(["attempt", "success", "failure"]);
  return text(name === "outcomeDescription" ? 40 : 12);
}

function canonical(event) {
  const critical = {};
  for (const name of CRITICAL) critical[name] = event[name] || null;
  return Object.keys(critical)
    .sort()
    .map((k) => `${k}:${JSON.stringify(critical[k])}`)
    .join("|");
}

const KEY = "test-key";
for (let i = 0; i < 300; i++) {
  const event = {};
  for (const name of CRITICAL) {
    const v = value(name);
    if (v !== undefined) event[name] = v;
  }
  const c = canonical(event);
  const hash = crypto.createHash("sha256").update(c, "utf8").digest("hex");
  const signature = crypto.createHmac("sha256", KEY).update(hash, "utf8").digest("hex");
  process.stdout.write(JSON.stringify({ event, canonical: c, hash, hmac_key: KEY, signature }) + "\n");
}
