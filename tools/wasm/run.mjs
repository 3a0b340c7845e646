// Runs a plan in the 32-bit MicroPython for WebAssembly (tools/wasm32.py writes the plan).
//   node run.mjs plan.json
// plan: {"copy": [[host_dir, mp_dir], ...], "path": [...],
//        "stages": [{"code": "...", "repeat": n, "until": null or a global's name}]}
// A stage with "until" stops repeating as soon as that global is true after a call.
// Host folders are copied into the port's in-memory filesystem; each stage (and each repeat of
// it) is its own runPython call: this port's gc.collect() only takes effect when control is
// back in JavaScript, so a stage boundary is where the heap is really collected, and nothing
// is freed inside a stage.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const mp = await loadMicroPython({
  // one 128 MB heap from the start: a heap that grows mid-call collects (and adds a split area)
  // inside the call, which would spoil "what a call allocated"
  heapsize: 128 * 1024 * 1024,
  pystack: 8192,
  stdout: (l) => process.stdout.write(l + "\n"),
  stderr: (l) => process.stderr.write(l + "\n"),
});

function mkdirs(path) {
  let cur = "";
  for (const part of path.split("/").filter(Boolean)) {
    cur += "/" + part;
    try { mp.FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}

function copyTree(src, dst) {
  mkdirs(dst);
  for (const name of readdirSync(src)) {
    const s = join(src, name);
    const d = dst + "/" + name;
    if (statSync(s).isDirectory()) copyTree(s, d);
    else mp.FS.writeFile(d, readFileSync(s));
  }
}

for (const [src, dst] of plan.copy || []) copyTree(src, dst);
mp.runPython("import sys\nsys.path[:0] = " + JSON.stringify(plan.path || []));
let i = 0;
for (const st of plan.stages) {
  const n = st.repeat || 1;
  for (let k = 0; k < n; k++) {
    try {
      mp.runPython(st.code);
    } catch (e) {
      process.stdout.write(`WASM32 FAIL stage ${i} (repeat ${k}): ${e.message || e}\n`);
      process.exit(1);
    }
    if (st.until && mp.globals.get(st.until)) break;
  }
  i++;
}
