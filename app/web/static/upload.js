// The upload page: one file at a time, sent with tus (tus-js-client, vendored under
// /static/vendor) to /tus/, so that a dropped connection, a cancel or a reload continues
// where the service stopped; the service's own error messages shown as they come.
"use strict";

const STORE_KEY = "paimon-token";
const $ = (id) => document.getElementById(id);
let config = { services: [], default_service: "", max_upload_bytes: Infinity, tickets: false };
const queue = [];
let busy = false;
let chosen = [];  // picked or dropped, sent when Upload is pressed

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 || n >= 100 ? 0 : 1)} ${units[i]}`;
}

function formatSeconds(s) {
  if (!isFinite(s)) return "…";
  if (s < 60) return `${Math.ceil(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.ceil(s % 60)} s`;
}

function announce(text) {
  // Clear first so that the same words twice are read twice.
  $("announce").textContent = "";
  setTimeout(() => { $("announce").textContent = text; }, 50);
}

async function loadConfig() {
  try {
    const answer = await fetch("/config", { headers: { Accept: "application/json" } });
    if (answer.ok) config = await answer.json();
  } catch (_) { /* keep the defaults: the upload itself will say what is wrong */ }
  const select = $("service");
  for (const name of config.services) {
    const option = new Option(name, name, false, name === config.default_service);
    select.add(option);
  }
  $("service-field").hidden = config.services.length < 2;
  if (config.tickets) {
    $("token-help").textContent =
      "Your token, or an upload ticket someone gave you. Kept in this browser only if you tick \"Remember\".";
  }
  if (isFinite(config.max_upload_bytes)) {
    $("limit").textContent =
      `Choose one or more files, or drop them here, then press Upload. Up to ${formatBytes(config.max_upload_bytes)} each.`;
  }
}

function restoreToken() {
  const saved = localStorage.getItem(STORE_KEY);
  if (saved) {
    $("token").value = saved;
    $("remember").checked = true;
  }
}

function keepToken() {
  if ($("remember").checked && $("token").value) localStorage.setItem(STORE_KEY, $("token").value);
  else localStorage.removeItem(STORE_KEY);
}

// One list item per file: name, progress bar, a line of status, then the link or error.
function addRow(file) {
  const item = document.createElement("li");
  item.className = "file";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = `${file.name} (${formatBytes(file.size)})`;
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = 0;
  bar.setAttribute("aria-label", `Upload progress of ${file.name}`);
  const status = document.createElement("span");
  status.className = "status";
  status.textContent = "Waiting";
  item.append(name, bar, status);
  $("results").append(item);
  return { item, bar, status, file, name: file.name, action: null };
}

function button(text, label, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.setAttribute("aria-label", label);
  element.addEventListener("click", onClick);
  return element;
}

// The row's one action button (Cancel while sending, Try again after a failure).
function setAction(row, element) {
  if (row.action) row.action.remove();
  row.action = element;
  if (element) row.item.append(element);
}

function showLink(row, link) {
  setAction(row, null);
  row.item.classList.add("done");
  row.bar.value = 100;
  row.status.textContent = "Uploaded:";
  const out = document.createElement("input");
  out.type = "text";
  out.readOnly = true;
  out.className = "link";
  out.value = link;
  out.setAttribute("aria-label", `Link to ${row.name}`);
  const copy = button("Copy link", `Copy link to ${row.name}`, () => copyLink(out, copy));
  row.item.append(out, copy);
  announce(`${row.name} uploaded. Link ready to copy.`);
}

async function copyLink(field, button) {
  try {
    await navigator.clipboard.writeText(field.value);
  } catch (_) {
    field.select();
    document.execCommand("copy");
  }
  button.textContent = "Copied";
  announce("Link copied");
  setTimeout(() => { button.textContent = "Copy link"; }, 2000);
}

function showError(row, message, canRetry) {
  row.item.classList.add("failed");
  row.bar.hidden = true;
  row.status.textContent = `Not uploaded: ${message}`;
  row.status.setAttribute("role", "alert");
  announce(`${row.name} not uploaded: ${message}`);
  const again = button("Try again", `Try uploading ${row.name} again`, () => retry(row));
  setAction(row, canRetry ? again : null);
}

function retry(row) {
  row.item.classList.remove("failed");
  row.status.removeAttribute("role");
  row.status.textContent = "Waiting";
  row.bar.hidden = false;
  row.bar.value = 0;
  queue.push({ file: row.file, row });
  drain();
}

// The service's own message, plus when to try again for 429 and 503. ``answer`` is
// tus-js-client's response: getStatus(), getBody(), getHeader(name).
function errorMessage(answer) {
  const status = answer.getStatus();
  let message = `the service answered ${status}`;
  try {
    const body = JSON.parse(answer.getBody());
    if (body && body.message) message = body.message;
  } catch (_) { /* not JSON: keep the status */ }
  if (status === 401 || status === 403) message += " (check your token or ticket)";
  const wait = Number.parseInt(answer.getHeader("Retry-After") || "", 10);
  if ((status === 429 || status === 503) && Number.isFinite(wait)) {
    message += `. Try again in ${formatSeconds(wait)}.`;
  }
  return message;
}

// A piece is 64 MiB: the service stores each as it arrives (memory stays flat whatever the
// size), and proxies that cap request bodies let it through.
const CHUNK_BYTES = 64 * 1024 * 1024;
// After a network failure tus-js-client asks where the upload stands and goes on from
// there, after each of these waits in turn; answers with a status are shown instead
// (the row's "Try again" continues the same upload), except "not where you think"
// (409) and "busy with your previous request" (423), which it sorts out itself.
const RETRY_DELAYS_MS = [0, 1000, 3000, 5000, 10000, 20000, 30000];

function send(file, row, token, service) {
  return new Promise((resolve) => {
    let started = null;
    let first = 0;
    const upload = new tus.Upload(file, {
      endpoint: "/tus/",
      chunkSize: CHUNK_BYTES,
      retryDelays: RETRY_DELAYS_MS,
      headers: { "X-Auth-Token": token },
      // The file's own date goes with it (MEGA's apps show it), in Unix seconds.
      metadata: Object.assign(
        { filename: file.name, mtime: String(Math.floor(file.lastModified / 1000)) },
        service ? { service } : {},
      ),
      removeFingerprintOnSuccess: true,
      onShouldRetry: (error) => {
        const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
        return status === 0 || status === 409 || status === 423;
      },
      onProgress: (sent, total) => {
        // Speed over this attempt only: a resumed upload starts at the stored offset.
        if (started === null) { started = performance.now(); first = sent; }
        const seconds = (performance.now() - started) / 1000;
        const speed = (sent - first) / Math.max(seconds, 0.001);
        row.bar.value = total ? (100 * sent) / total : 100;
        row.status.textContent = sent >= total ? "Storing…" :
          `${Math.floor(row.bar.value)} %, ${formatBytes(speed)}/s, ` +
          `${formatSeconds((total - sent) / speed)} left`;
      },
      onSuccess: (payload) => {
        const link = payload && payload.lastResponse && payload.lastResponse.getHeader("Paimon-Link");
        if (link) showLink(row, link);
        else showError(row, "the service did not send the link", true);
        resolve();
      },
      onError: (error) => {
        const answer = error.originalResponse;
        if (!answer || !answer.getStatus()) {
          showError(row, "the service could not be reached; check your connection", true);
        } else {
          const status = answer.getStatus();
          // Sending the same request again cannot help with these; it can after a new token.
          showError(row, errorMessage(answer), ![400, 413, 415, 422].includes(status));
        }
        resolve();
      },
    });
    const cancel = button("Cancel", `Cancel uploading ${row.name}`, () => {
      upload.abort();
      showError(row, "cancelled", true);
      resolve();
    });
    const wasFocused = row.action && document.activeElement === row.action;
    setAction(row, cancel);
    if (wasFocused) cancel.focus();  // "Try again" became "Cancel": keep the keyboard there
    row.status.textContent = "Starting";
    // A file this browser began sending before (a reload, a cancel) goes on where it stopped.
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  });
}

async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const { file, row } = queue.shift();
    await send(file, row, $("token").value.trim(), $("service").value);
  }
  busy = false;
}

// Files to send once Upload is pressed; choosing alone starts nothing.
function choose(files) {
  chosen = [...files];
  const names = chosen.map((file) => file.name).join(", ");
  const count = chosen.length === 1 ? "1 file" : `${chosen.length} files`;
  $("chosen").textContent = chosen.length ? `${count} chosen: ${names}. Press Upload to send.` : "";
}

// The largest file this token or ticket may send: its own limit can be below the service's.
async function limitFor(token) {
  try {
    const answer = await fetch("/config", {
      headers: { Accept: "application/json", "X-Auth-Token": token },
      cache: "no-store",
    });
    if (answer.ok) return (await answer.json()).max_upload_bytes;
  } catch (_) { /* the upload itself will say what is wrong */ }
  return config.max_upload_bytes;
}

async function enqueue(files) {
  if (!files.length) return false;
  const token = $("token").value.trim();
  if (!token) {
    $("token").setAttribute("aria-invalid", "true");
    $("token").focus();
    announce("Enter your token or ticket first, then press Upload again.");
    return false;
  }
  $("token").removeAttribute("aria-invalid");
  keepToken();
  const limit = await limitFor(token);
  for (const file of files) {
    const row = addRow(file);
    if (file.size > limit) {
      showError(row, `the file is larger than the limit of ${formatBytes(limit)}`);
    } else {
      queue.push({ file, row });
    }
  }
  drain();
  return true;
}

function downloadShareX() {
  const token = $("token").value.trim();
  if (!token) {
    $("token").focus();
    announce("Enter your token or ticket first.");
    return;
  }
  fetch("/sharex.sxcu", { cache: "no-store" }).then(async (answer) => {
    const sxcu = await answer.json();
    // Without PUBLIC_BASE_URL the service has no address to put in it: say so.
    if (!answer.ok || !sxcu.Headers) {
      showNotice(sxcu.message || `the service answered ${answer.status}`);
      return;
    }
    sxcu.Headers["X-Auth-Token"] = token;
    const blob = new Blob([JSON.stringify(sxcu, null, 2)], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "paimon-with-token.sxcu";
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }).catch(() => showNotice("the service could not be reached; check your connection"));
}

// A problem that belongs to no file's row, read out at once.
function showNotice(message) {
  const notice = $("sharex-notice");
  notice.textContent = `No ShareX uploader: ${message}`;
  notice.hidden = false;
}

function init() {
  restoreToken();
  loadConfig();
  $("remember").addEventListener("change", keepToken);
  $("token").addEventListener("change", keepToken);
  $("files").addEventListener("change", () => choose($("files").files));
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!chosen.length) {
      $("files").focus();
      announce("Choose one or more files first.");
      return;
    }
    enqueue(chosen).then((queued) => {
      if (queued) {
        $("files").value = "";
        choose([]);
      }
    });
  });
  // The whole page takes drops, so a file dropped beside the box is not opened instead.
  const drop = $("drop");
  document.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files);
  });
  $("sharex-with-token").addEventListener("click", downloadShareX);
}

document.addEventListener("DOMContentLoaded", init);
