// The autoprune dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
//
// One HTML document serves every page; the path picks the view: /ui/login, / (job list and
// submit form) or /ui/jobs/<id>. All data comes from the JSON API with the bearer token.
// Data from the API is only ever inserted with textContent / text nodes (never innerHTML),
// and the server's Content-Security-Policy allows no inline script besides.
"use strict";

// The token lives in sessionStorage, never in a cookie: the JSON API only honours an explicit
// Authorization header, so with no cookie there is nothing a browser would attach on its own to
// a cross-site request, and hence no CSRF surface. sessionStorage (not localStorage) also keeps
// it to this tab and drops it when the tab closes.
const TOKEN_KEY = "autoprune.token";
const NOTICE_KEY = "autoprune.notice";
const POLL_MS = 2000;
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATUSES = new Set(["queued", "running", ...FINAL]);
const PLOTS = ["widths.png", "macs.png", "search.png", "finetune.png"];

const $ = (id) => document.getElementById(id);

/** An element with properties and children; strings become text nodes (never parsed as HTML). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(el.dataset, value);
    else el[key] = value;
  }
  el.append(...children.filter((c) => c !== null && c !== undefined)); // append() makes text nodes of strings
  return el;
}

function show(el, visible = true) {
  el.hidden = !visible;
}

function setText(el, text) {
  el.textContent = text === null || text === undefined ? "" : String(text);
}

// --- API ------------------------------------------------------------------------------------

class ApiProblem extends Error {
  constructor(status, error, detail) {
    super(`${error}: ${detail}`);
    this.status = status;
    this.error = error;
    this.detail = detail;
  }
}

async function problemOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page, say): fall back to the status line
  }
  if (!body || typeof body !== "object") body = {};
  const error = typeof body.error === "string" ? body.error : `http_${response.status}`;
  let detail = "detail" in body ? body.detail : response.statusText;
  if (typeof detail !== "string") detail = JSON.stringify(detail);
  return new ApiProblem(response.status, error, detail);
}

/** fetch() with the bearer token; a 401 signs the user out, other failures throw an ApiProblem. */
async function api(path, options = {}, token = sessionStorage.getItem(TOKEN_KEY)) {
  const { signOutOn401 = true, ...init } = options;
  const headers = { ...(init.headers || {}), Authorization: `Bearer ${token}` };
  const response = await fetch(path, { ...init, headers, cache: "no-store" });
  if (response.ok) return response;
  const problem = await problemOf(response);
  if (response.status === 401 && signOutOn401) signOut(`Signed out: ${problem.detail}.`);
  throw problem;
}

const apiJson = async (path, options) => (await api(path, options)).json();

/** An artifact as a Blob (downloads need the token, so no plain links). */
async function artifactBlob(jobId, name, type) {
  const response = await api(`/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(name)}`);
  const blob = await response.blob();
  return type ? new Blob([blob], { type }) : blob;
}

function showProblem(el, problem) {
  el.replaceChildren();
  if (problem instanceof ApiProblem) {
    el.append(h("strong", {}, `${problem.status} ${problem.error}`), h("span", {}, ` — ${problem.detail}`));
  } else {
    el.append(h("strong", {}, "not sent"), h("span", {}, ` — ${problem && problem.message ? problem.message : problem}`));
  }
  show(el);
}

// --- sign in / out --------------------------------------------------------------------------

function signOut(notice) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (notice) sessionStorage.setItem(NOTICE_KEY, notice);
  const here = location.pathname;
  const next = here === "/ui/login" ? "" : `?next=${encodeURIComponent(here)}`;
  location.assign(`/ui/login${next}`);
}

/** Only our own pages are valid targets after sign-in (no open redirect). */
function safeNext() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return /^\/(ui\/jobs\/[0-9a-f]{32})?$/.test(next) ? next : "/";
}

function loginView() {
  show($("login-view"));
  const notice = sessionStorage.getItem(NOTICE_KEY);
  if (notice) {
    sessionStorage.removeItem(NOTICE_KEY);
    setText($("login-error"), notice);
    show($("login-error"));
  }
  $("token").focus();
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    show($("login-error"), false);
    try {
      await api("/jobs?limit=1", { signOutOn401: false }, token); // a cheap call that needs a valid token
    } catch (problem) {
      showProblem($("login-error"), problem);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    location.assign(safeNext());
  });
}

// --- polling --------------------------------------------------------------------------------

/**
 * Call `step` now and every POLL_MS while the tab is visible, until it returns false.
 * Hidden tabs do not poll; they catch up at once when shown again. Returns a "refresh now".
 */
function poll(step) {
  let timer = null;
  let busy = false;
  let again = false;
  let done = false;
  const run = async () => {
    clearTimeout(timer);
    timer = null;
    if (done || document.hidden) return;
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      done = (await step()) === false;
      show($("notice"), false);
    } catch (problem) {
      if (!(problem instanceof ApiProblem && problem.status === 401)) {
        setText($("notice"), `Refresh failed (${problem.message}); retrying…`);
        show($("notice"));
      }
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      run();
    } else if (!done && !document.hidden) {
      timer = setTimeout(run, POLL_MS);
    }
  };
  document.addEventListener("visibilitychange", () => document.hidden || run());
  run();
  return run;
}

// --- formatting -----------------------------------------------------------------------------

function budgetText(budget) {
  if (!budget || typeof budget !== "object") return "";
  if ("flops" in budget) return `MACs ≤ ${pct(budget.flops)}`;
  if ("params" in budget) return `params ≤ ${pct(budget.params)}`;
  if ("latency" in budget) {
    return `latency ≤ ${pct(budget.latency)} of the unpruned model's (${budget.runtime || "torch"}, batch ${budget.batch_size || 1})`;
  }
  if ("latency_ms" in budget) {
    return `latency ≤ ${budget.latency_ms} ms (${budget.runtime || "torch"}, batch ${budget.batch_size || 1})`;
  }
  return JSON.stringify(budget);
}

const pct = (fraction) => `${Math.round(Number(fraction) * 1000) / 10}%`;
const when = (iso) => (iso ? new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "");

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function statusBadge(job) {
  const status = STATUSES.has(job.status) ? job.status : "unknown";
  const text = job.cancel_requested && job.status === "running" ? "cancelling" : job.status;
  return h("span", { className: `status status-${status}` }, text);
}

/** The architecture name, or for an uploaded ONNX graph (stored arch "onnx") its file name. */
function modelName(job) {
  const onnx = job.inputs && job.inputs.onnx;
  if (onnx) return `${onnx.filename} (ONNX)`;
  return (job.spec && job.spec.arch) || "";
}

// --- job list + submit form -----------------------------------------------------------------

function jobRow(job) {
  const spec = job.spec || {};
  const link = h("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}`, title: job.id }, job.id.slice(0, 8));
  const progress = h("progress", { max: 1, value: job.progress || 0 });
  const stage = job.status === "running" && job.stage ? ` · ${job.stage}` : "";
  return h(
    "tr",
    { dataset: { jobId: job.id, status: job.status } },
    h("td", {}, link),
    h("td", {}, modelName(job)),
    h("td", {}, spec.criterion ? `${spec.method} / ${spec.criterion}` : spec.method || ""),
    h("td", {}, budgetText(spec.budget)),
    h("td", {}, statusBadge(job)),
    h("td", { className: "progress-cell" }, progress, h("span", { className: "muted" }, ` ${pct(job.progress || 0)}${stage}`)),
    h("td", { className: "muted" }, when(job.created_at)),
  );
}

/** Jobs per page: ?per_page=N (1-100), else 50. */
function pageSize() {
  const asked = Number(new URLSearchParams(location.search).get("per_page"));
  return Number.isInteger(asked) && asked >= 1 && asked <= 100 ? asked : 50;
}

function jobsView() {
  show($("jobs-view"));
  const size = pageSize();
  let offset = 0;
  const refresh = poll(async () => {
    const page = await apiJson(`/jobs?limit=${size}&offset=${offset}`);
    if (page.data.length === 0 && offset > 0) {
      offset = Math.max(0, offset - size); // the last page emptied (jobs are only ever added, but be safe)
      return;
    }
    $("jobs").tBodies[0].replaceChildren(...page.data.map(jobRow));
    const range = page.count > page.data.length ? `${offset + 1}–${offset + page.data.length} of ` : "";
    setText($("jobs-count"), `(${range}${page.count})`);
    $("jobs-newer").disabled = offset === 0;
    $("jobs-older").disabled = offset + page.data.length >= page.count;
    show($("jobs-pages"), page.count > size);
    show($("jobs"), page.count > 0);
    show($("jobs-empty"), page.count === 0);
  });
  $("jobs-newer").addEventListener("click", () => {
    offset = Math.max(0, offset - size);
    refresh();
  });
  $("jobs-older").addEventListener("click", () => {
    offset += size;
    refresh();
  });
  setUpSubmitForm(refresh);
}

/** Show only the inputs of the chosen radio option (and disable the others). */
function bindChoice(radioName, attribute) {
  const update = () => {
    const chosen = document.querySelector(`input[name="${radioName}"]:checked`).value;
    for (const el of document.querySelectorAll(`[${attribute}]`)) {
      const on = el.getAttribute(attribute) === chosen;
      show(el, on);
      for (const input of el.querySelectorAll("input")) input.disabled = !on;
    }
  };
  for (const radio of document.querySelectorAll(`input[name="${radioName}"]`)) radio.addEventListener("change", update);
  update();
}

/** The multipart body of POST /jobs, or an Error naming the field at fault. */
function submission() {
  const form = new FormData();
  const file = (id) => $(id).files[0];
  if (document.querySelector('input[name="source"]:checked').value === "onnx") {
    if (!file("onnx")) throw new Error("choose an ONNX file (or switch to an architecture name)");
    form.append("onnx", file("onnx"));
  } else {
    form.append("arch", $("arch").value.trim());
  }
  if (file("weights")) form.append("weights", file("weights"));
  if (document.querySelector('input[name="data-source"]:checked').value === "archive") {
    if (!file("data")) throw new Error("choose a data archive (or switch to digits)");
    form.append("data", file("data"));
  } else {
    form.append("dataset", "digits");
  }

  const kind = $("budget-kind").value;
  const budget = { [kind]: Number($("budget-value").value) };
  if (kind === "latency" || kind === "latency_ms") {
    budget.runtime = $("runtime").value;
    budget.batch_size = Number($("latency-batch").value);
  }
  form.append("budget", JSON.stringify(budget));
  form.append("method", $("method").value);
  if ($("criterion").value) form.append("criterion", $("criterion").value);
  form.append("channel_step", $("channel-step").value);
  if ($("method").value === "evolution") {
    form.append("search_trials", $("search-trials").value);
    form.append("search_workers", $("search-workers").value);
  }

  const finetune = { epochs: Number($("epochs").value) };
  const extra = $("finetune-extra").value.trim();
  if (extra) {
    let parsed;
    try {
      parsed = JSON.parse(extra);
    } catch (err) {
      throw new Error(`advanced fine-tune options are not valid JSON: ${err.message}`);
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error('advanced fine-tune options must be a JSON object such as {"max_steps_per_epoch": 4}');
    }
    Object.assign(finetune, parsed);
  }
  form.append("finetune", JSON.stringify(finetune));
  return form;
}

function setUpSubmitForm(refreshList) {
  bindChoice("source", "data-source");
  bindChoice("data-source", "data-data-source");
  const kind = $("budget-kind");
  kind.addEventListener("change", () => {
    show($("latency-options"), kind.value === "latency" || kind.value === "latency_ms");
    $("budget-value").value = { latency: "0.7", latency_ms: "5" }[kind.value] || "0.5";
  });
  const method = $("method");
  method.addEventListener("change", () => show($("search-options"), method.value === "evolution"));

  $("submit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    show($("submit-error"), false);
    show($("submit-status"), false);
    const button = $("submit");
    button.disabled = true;
    setText(button, "Submitting…"); // the server builds the model and loads the inputs first
    try {
      const job = await apiJson("/jobs", { method: "POST", body: submission() });
      setText($("submit-status"), `Queued job ${job.id.slice(0, 8)}.`);
      show($("submit-status"));
      refreshList();
    } catch (problem) {
      showProblem($("submit-error"), problem);
    } finally {
      button.disabled = false;
      setText(button, "Submit job");
    }
  });
}

// --- one job --------------------------------------------------------------------------------

function renderStatus(job) {
  $("job-status").replaceWith(Object.assign(statusBadge(job), { id: "job-status" }));
  setText($("job-stage"), job.stage || "—");
  $("job-progress").value = job.progress || 0;
  setText($("job-percent"), pct(job.progress || 0));
  setText($("job-eta"), job.eta_seconds === null || job.eta_seconds === undefined ? "—" : `about ${duration(job.eta_seconds)}`);
  setText($("job-attempt"), job.attempt ? `${job.attempt} of ${job.max_attempts}` : "not started");
  setText($("job-created"), when(job.created_at));
  setText($("job-finished"), when(job.finished_at) || "—");
  const error = $("job-error");
  if (job.error || job.error_detail) {
    error.replaceChildren(h("strong", {}, job.error || "error"), h("span", {}, job.error_detail ? ` — ${job.error_detail}` : ""));
  }
  show(error, Boolean(job.error || job.error_detail));
  show($("cancel"), (job.status === "queued" || job.status === "running") && !job.cancel_requested);
}

function renderSpec(job) {
  const spec = job.spec || {};
  const rows = [
    ["Model", modelName(job)],
    ["Data", spec.dataset || (job.inputs && job.inputs.data ? job.inputs.data.filename : "")],
    ["Budget", budgetText(spec.budget)],
    ["Method", spec.method],
    ["Criterion", spec.criterion || (job.result && job.result.criterion) || "method's default"],
    ["Fine-tune", JSON.stringify(spec.finetune || {})],
  ];
  for (const [key, input] of Object.entries(job.inputs || {})) rows.push([`Input: ${key}`, `${input.filename} (${bytes(input.size)})`]);
  $("job-spec").replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v === undefined ? "" : v)]));
}

function renderSummary(report) {
  const rows = [];
  const num = (x) => typeof x === "number" && Number.isFinite(x);
  const row = (name, before, after, scale, digits, note) => {
    if (!num(before) || !num(after)) return;
    const ratio = before ? (after / before).toFixed(3) : "—";
    rows.push(h("tr", {}, h("th", {}, name), h("td", {}, (before * scale).toFixed(digits)),
      h("td", {}, (after * scale).toFixed(digits)), h("td", {}, note || ratio)));
  };
  row("top-1 (%)", report.accuracy_before, report.accuracy_after, 100, 2,
    num(report.accuracy_pruned) ? `pruned, BN re-estimated: ${(100 * report.accuracy_pruned).toFixed(2)}` : "");
  row("MACs (M)", report.macs_before, report.macs_after, 1e-6, 2);
  row("params (M)", report.params_before, report.params_after, 1e-6, 3);
  row("latency torch (ms)", report.latency_ms_before, report.latency_ms_after, 1, 2);
  const latency = report.latency || {};
  const ort = (x) => (x && num(x.onnxruntime) ? x.onnxruntime : null);
  row("latency onnxruntime (ms)", ort(latency.before), ort(latency.after), 1, 2);
  $("summary").tBodies[0].replaceChildren(...rows);
}

async function renderArtifacts(jobId) {
  const listing = await apiJson(`/jobs/${encodeURIComponent(jobId)}/artifacts`);
  const names = listing.data.map((a) => a.name);
  $("artifacts").replaceChildren(
    ...listing.data.map((artifact) => {
      const button = h("button", { type: "button", className: "link" }, artifact.name);
      button.addEventListener("click", () => download(jobId, artifact.name));
      return h("li", {}, button, h("span", { className: "muted" }, ` ${bytes(artifact.size)} · sha256 ${artifact.sha256.slice(0, 12)}…`));
    }),
  );

  const pngs = [...PLOTS.filter((n) => names.includes(n)), ...names.filter((n) => n.endsWith(".png") && !PLOTS.includes(n))];
  const images = new Map(); // artifact name -> blob: URL
  await Promise.all(pngs.map(async (name) => images.set(name, URL.createObjectURL(await artifactBlob(jobId, name, "image/png")))));
  $("plots").replaceChildren(...pngs.map((name) => h("figure", {}, h("img", { src: images.get(name), alt: name }), h("figcaption", {}, name))));
  show($("plots-section"), pngs.length > 0);

  if (names.includes("report.html")) {
    const html = await (await artifactBlob(jobId, "report.html")).text();
    $("report-link").href = reportUrl(html, images);
    show($("report-link-row"));
  }
}

/**
 * report.html as a blob: URL to open in a new tab. That tab inherits this page's CSP, so no
 * script or event handler in it can run, whatever the file holds. The same CSP refuses inline
 * styles, and relative image links cannot resolve from a blob: URL, so the text is adjusted:
 * each <style> block becomes a blob: stylesheet and <img src="widths.png"> points at the
 * artifact fetched already. (Plain text edits: parsing the file here would have this page's CSP
 * report every inline style and handler in it. Safety does not depend on these edits.)
 */
function reportUrl(html, images) {
  const styled = html.replace(/<style\b[^>]*>([\s\S]*?)<\/style\s*>/gi, (_, css) => {
    const href = URL.createObjectURL(new Blob([css], { type: "text/css" }));
    return `<link rel="stylesheet" href="${href}">`;
  });
  const linked = styled.replace(/(<img\b[^>]*?\bsrc\s*=\s*)(["'])(?:\.\/)?([^"'<>]+)\2/gi, (tag, head, quote, name) =>
    images.has(name) ? `${head}"${images.get(name)}"` : tag,
  );
  return URL.createObjectURL(new Blob([linked], { type: "text/html" }));
}

async function download(jobId, name) {
  show($("download-error"), false);
  try {
    const url = URL.createObjectURL(await artifactBlob(jobId, name));
    const link = h("a", { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000); // the browser may still be reading it
  } catch (problem) {
    showProblem($("download-error"), problem);
  }
}

function jobView(jobId) {
  show($("job-view"));
  setText($("job-id"), jobId);
  document.title = `autoprune · job ${jobId.slice(0, 8)}`;
  const path = `/jobs/${encodeURIComponent(jobId)}`;
  const refresh = poll(async () => {
    let job;
    try {
      job = await apiJson(path);
    } catch (problem) {
      if (!(problem instanceof ApiProblem && problem.status === 404)) throw problem;
      setText($("job-missing"), "No such job among yours (another owner's jobs are not shown).");
      show($("job-missing"));
      return false;
    }
    show($("job-body"));
    renderStatus(job);
    renderSpec(job);
    if (!FINAL.has(job.status)) return true;
    if (job.status === "succeeded") {
      if (job.result) renderSummary(job.result);
      show($("job-report"));
      await renderArtifacts(job.id);
    }
    return false;
  });

  $("cancel").addEventListener("click", async () => {
    if (!window.confirm("Cancel this job?")) return;
    show($("cancel-error"), false);
    try {
      await api(path, { method: "DELETE" });
    } catch (problem) {
      showProblem($("cancel-error"), problem);
    }
    refresh();
  });
}

// --- start ----------------------------------------------------------------------------------

function start() {
  const path = location.pathname;
  if (path === "/ui/login") return loginView();
  if (!sessionStorage.getItem(TOKEN_KEY)) return signOut(null);
  show($("logout"));
  $("logout").addEventListener("click", () => signOut("Signed out."));
  const match = /^\/ui\/jobs\/([^/]+)$/.exec(path);
  return match ? jobView(decodeURIComponent(match[1])) : jobsView();
}

start();
