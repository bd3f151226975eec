// The page: forms that call the JSON API and show its answers as tables and charts. It holds no
// prediction logic: every number shown is one the API returned.
"use strict";

const $ = (selector) => document.querySelector(selector);

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json();
  if (!response.ok) {
    const detail = (data.detail || []).map((d) => `${d.field}: ${d.reason}`).join("\n");
    throw new Error(`${response.status}: ${detail || JSON.stringify(data)}`);
  }
  return data;
}

function interval(v, unit) {
  if (!v) return "—";
  return `${fmt(v.value)} ${unit} [${fmt(v.low)}, ${fmt(v.high)}]`;
}

function table(node, header, rows) {
  node.replaceChildren();
  const head = node.insertRow();
  for (const h of header) head.append(Object.assign(document.createElement("th"), { textContent: h }));
  for (const row of rows) {
    const tr = node.insertRow();
    for (const cell of row) tr.insertCell().textContent = cell;
  }
}

function guarded(errorNode, fn) {
  return async (event) => {
    event.preventDefault();
    errorNode.textContent = "";
    try {
      await fn(new FormData(event.target));
    } catch (err) {
      errorNode.textContent = err.message;
    }
  };
}

for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => {
    for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b === button);
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.id === `tab-${button.dataset.tab}`);
  });
}

let catalog = {};

async function loadDevices() {
  const { devices } = await api("GET", "/v1/devices");
  catalog = Object.fromEntries(devices.map((d) => [d.name, d]));
  const select = $("#gemm-devices");
  for (const d of devices) select.append(new Option(`${d.name} (${d.kind || "gpu"})`, d.name));
  if (select.options.length) select.options[0].selected = true;
}

async function loadReadiness() {
  const response = await fetch("/readyz");
  const data = await response.json();
  const domains = Object.entries(data.domains || {}).map(([name, state]) => `${name}: ${state}`);
  $("#ready").textContent = domains.join(" · ") || data.status;
}

$("#gemm-form").addEventListener("submit", guarded($("#gemm-error"), async (form) => {
  const shape = {};
  for (const key of ["m", "n", "k", "batch"]) shape[key] = Number(form.get(key));
  shape.op = form.get("op");
  shape.dtype = form.get("dtype");
  if (form.get("quantize")) shape.quantize_activation = true;
  const devices = form.getAll("devices");
  const spec = form.get("spec").trim();
  const instances = devices.map((device) => ({ ...shape, device }));
  if (spec) instances.push({ ...shape, device_spec: JSON.parse(spec) });
  if (!instances.length) throw new Error("pick a device or give an inline spec");
  const answer = await api("POST", "/v1/gemm/predict", { instances, coverage: Number(form.get("coverage")) });
  const names = instances.map((i) => i.device || i.device_spec.name);
  const rows = answer.predictions;
  table($("#gemm-table"), ["device", "runtime", "power", "energy", "cost", "utilization", "flags"],
    rows.map((p, i) => [names[i], interval(p.runtime_ms, "ms"), interval(p.power_w, "W"), interval(p.energy_j, "J"),
      interval(p.cost_usd, "USD"), interval(p.utilization, ""),
      [...p.ood_reasons, ...Object.values(p.unavailable)].join("; ")]));
  const priced = rows.map((p, i) => ({ p, label: names[i] })).filter(({ p }) => p.runtime_ms);
  barChart($("#gemm-chart"), priced.map(({ p, label }) => ({ label, ...p.runtime_ms })), "ms");
  if (priced.length) {
    const { p } = priced[0];
    const rate = (ms) => p.roofline.flops / (ms / 1e3) / 1e9;
    rooflineChart($("#roofline-chart"), p.roofline, {
      intensity: p.roofline.flops / p.roofline.bytes,
      gflops: rate(p.runtime_ms.value), low: rate(p.runtime_ms.high), high: rate(p.runtime_ms.low),
    });
  }
}));

const TRANSFORMER_LAYER = [
  { op: "linear", m: 2048, n: 2304, k: 768, dtype: "float16", count: 12 },
  { op: "bmm", batch: 12, m: 512, n: 512, k: 64, dtype: "float16", count: 12 },
  { op: "bmm", batch: 12, m: 512, n: 64, k: 512, dtype: "float16", count: 12 },
  { op: "linear", m: 2048, n: 768, k: 768, dtype: "float16", count: 12 },
  { op: "linear", m: 2048, n: 3072, k: 768, dtype: "float16", count: 12 },
  { op: "linear", m: 2048, n: 768, k: 3072, dtype: "float16", count: 12 },
];
$("#search-workload").value = JSON.stringify(TRANSFORMER_LAYER, null, 1);

$("#search-form").addEventListener("submit", guarded($("#search-error"), async (form) => {
  const constraints = {};
  for (const key of ["max_power_w", "max_cost_usd", "max_time_ms"]) {
    if (form.get(key)) constraints[key] = Number(form.get(key));
  }
  const answer = await api("POST", "/v1/gemm/search", {
    workload: JSON.parse(form.get("workload")), objective: form.get("objective"), constraints,
  });
  const field = { time: "time_ms", energy: "energy_j", cost: "cost_usd" }[answer.objective];
  const unit = { time_ms: "ms", energy_j: "J", cost_usd: "USD" }[field];
  table($("#search-table"), ["rank", "device", "configuration", "time", "energy", "cost", "max power", "flags"],
    answer.ranked.map((c, i) => [i + 1, c.device, JSON.stringify(c.configuration), interval(c.time_ms, "ms"),
      interval(c.energy_j, "J"), interval(c.cost_usd, "USD"), interval(c.max_power_w, "W"),
      c.out_of_distribution ? `${c.ood_reasons.length} OOD reason(s)` : ""]));
  barChart($("#search-chart"), answer.ranked.map((c) => ({ label: c.device, ...c[field] })), unit);
  const excluded = $("#search-excluded");
  excluded.replaceChildren(...answer.excluded.map((e) => Object.assign(document.createElement("li"),
    { textContent: `${e.device}: ${e.reason}` })));
}));

const CPU_EXAMPLE = {
  vendor: "Intel", model_name: "Intel Xeon Gold 6248R", nominal_mhz: 3000, max_mhz: 4000,
  cores_per_socket: 24, sockets: 2, threads_per_core: 2, l2_cache_kb: 1024, l3_cache_kb: 36608,
  mem_kb: 402653184, os_name: "SLES", arch: "x86_64",
};
$("#cpu-spec").value = JSON.stringify(CPU_EXAMPLE, null, 1);

async function loadSuites() {
  try {
    const { suites } = await api("GET", "/v1/cpu/benchmarks");
    for (const name of Object.keys(suites)) $("#cpu-suite").append(new Option(name, name));
  } catch (err) {
    $("#cpu-error").textContent = err.message;
  }
}

$("#cpu-form").addEventListener("submit", guarded($("#cpu-error"), async (form) => {
  const answer = await api("POST", "/v1/cpu/predict", { instances: [JSON.parse(form.get("spec"))], suite: form.get("suite") });
  const p = answer.predictions[0];
  const items = Object.entries(p.benchmarks).filter(([, v]) => v).map(([label, v]) => ({ label, ...v }));
  table($("#cpu-table"), ["benchmark", "ratio"], [...items.map((d) => [d.label, interval(d, "")]), ["score", interval(p.score, "")]]);
  barChart($("#cpu-chart"), items, "");
}));

$("#mlir-text").value = [
  "func.func @main(%a: tensor<256x256xf32>, %b: tensor<256x256xf32>, %c: tensor<256x256xf32>) -> tensor<256x256xf32> {",
  "  %0 = linalg.matmul ins(%a, %b : tensor<256x256xf32>, tensor<256x256xf32>) outs(%c : tensor<256x256xf32>) -> tensor<256x256xf32>",
  "  return %0 : tensor<256x256xf32>",
  "}",
].join("\n");

$("#mlir-form").addEventListener("submit", guarded($("#mlir-error"), async (form) => {
  const answer = await api("POST", "/v1/mlir/predict", { instances: [{ mlir: form.get("mlir") }] });
  const p = answer.predictions[0];
  const targets = ["runtime_ms", "instructions", "vector_registers", "spills", "utilization"];
  table($("#mlir-table"), ["target", "prediction"], targets.map((t) => [t, interval(p[t], "")]));
  $("#mlir-summary").textContent = JSON.stringify({ summary: p.summary, ood_reasons: p.ood_reasons }, null, 1);
}));

loadReadiness();
loadDevices().catch((err) => { $("#gemm-error").textContent = err.message; });
loadSuites();
