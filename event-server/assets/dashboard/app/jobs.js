// The overview's queue counters, active jobs with progress bars, recent
// completions and failures, and the demo actions (create a note, submit a
// job), all fed by the page's stream.

import { api } from "./api.js";
import { onEvent } from "./stream.js";

const $ = (id) => document.getElementById(id);
const jobs = new Map();

function upsertJob(id, patch) {
  let job = jobs.get(id);
  if (!job) {
    job = { progress: 0, type: "job", state: "queued" };
    const el = document.createElement("div");
    el.className = "job";
    el.dataset.jobId = id;
    const label = document.createElement("div");
    label.className = "label";
    const name = document.createElement("span");
    name.className = "name";
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = "0%";
    label.append(name, pct);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", "0");
    bar.append(document.createElement("div"));
    el.append(label, bar);
    $("jobs").appendChild(el);
    job.el = el;
    jobs.set(id, job);
    $("no-jobs").hidden = true;
  }
  for (const [k, v] of Object.entries(patch)) if (v !== undefined) job[k] = v;
  job.el.querySelector(".name").textContent =
    job.type + " " + id.slice(-6) + " · " + job.state + (job.message ? " · " + job.message : "");
  job.el.querySelector(".pct").textContent = job.progress + "%";
  job.el.querySelector(".bar").setAttribute("aria-valuenow", job.progress);
  job.el.querySelector(".bar > div").style.width = job.progress + "%";
}

function finishJob(ev) {
  const ok = ev.type === "JobCompleted";
  if (ok) upsertJob(ev.job_id, { progress: 100, state: "completed", type: ev.job_type });
  const job = jobs.get(ev.job_id);
  const li = document.createElement("li");
  li.dataset.jobId = ev.job_id;
  li.className = ok ? "ok" : "fail";
  li.textContent = (ok ? "✓ " : "✗ ") + ev.job_type + " " + ev.job_id.slice(-6) +
    (ok ? (ev.duration_ms != null ? " in " + ev.duration_ms + " ms" : "") : " — " + ev.error);
  $("done").prepend(li);
  while ($("done").children.length > 20) $("done").lastChild.remove();
  if (job) {
    // Keep the finished bar visible briefly so its final state can be seen.
    setTimeout(() => {
      job.el.remove();
      jobs.delete(ev.job_id);
      $("no-jobs").hidden = jobs.size > 0;
    }, 4000);
  }
}

function handle(ev) {
  switch (ev.type) {
    case "QueueStatus":
      $("q-total").textContent = ev.total_jobs;
      $("q-running").textContent = ev.running;
      $("q-pending").textContent = ev.pending;
      break;
    case "JobQueued":
    case "JobStarted":
      upsertJob(ev.job_id, { type: ev.job_type, note: ev.note_id, state: ev.type === "JobStarted" ? "running" : "queued" });
      break;
    case "JobProgress":
      upsertJob(ev.job_id, { progress: ev.progress_percent ?? ev.progress, message: ev.message });
      break;
    case "JobCompleted":
    case "JobFailed":
      finishJob(ev);
      break;
  }
}

export function initJobs() {
  onEvent(({ event, meta }) => { if (!meta && event) handle(event); });
  $("note-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const note = await api("POST", "/api/v1/notes", { title: $("note-title").value, content: "Written from the dashboard.", tags: ["demo"] });
      $("job-note").value = note.id;
      $("action-status").textContent = "note " + note.id + " created";
    } catch (err) {
      $("action-status").textContent = "could not create note: " + err.message;
    }
  });
  $("job-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { job_type: $("job-type").value };
    if ($("job-note").value.trim()) body.note_id = $("job-note").value.trim();
    try {
      const job = await api("POST", "/api/v1/jobs", body);
      $("action-status").textContent = "job " + job.job_id + " submitted";
    } catch (err) {
      $("action-status").textContent = "could not submit job: " + err.message;
    }
  });
}
