#!/usr/bin/env python3
"""Checks a finished cluster run's Prometheus metrics and JSON event logs against what
happened (tests/runtime/cluster_test.sh scenario `metrics`).

Scrapes GET /metrics of the coordinator and of each worker (addresses from their
`metrics.listening` log lines), parses the exposition with prometheus_client (and
promtool when installed), and checks: items done == lines submitted, token counters ==
the result records' sums, the workers gauge, queue and in-flight gauges at 0, K/V in
use back to 0 on every worker, K/V bytes the coordinator counted == bytes the workers
fetched, task counters == histogram counts, 404 off /metrics; and that every line of
the JSON log parses and follows each document from submit to result.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def metrics_address(log_path):
    for line in open(log_path, encoding="utf-8"):
        if "metrics.listening" not in line:
            continue
        if line.startswith("{"):
            return json.loads(line)["address"]
        m = re.search(r" address=(\S+)", line)
        if m:
            return m.group(1)
    fail(f"{log_path}: no metrics.listening line")


def scrape(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("text/plain") or "version=0.0.4" not in ctype:
            fail(f"{address}: content type {ctype!r}")
        text = r.read().decode("utf-8")
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
        if p.returncode != 0:
            fail(f"promtool check metrics ({address}): {p.stdout.decode()} {p.stderr.decode()}")
    return text, samples


def value(samples, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        fail(f"no sample {name}{labels}")
    return samples[key]


def total(samples, name):
    return sum(v for (n, _), v in samples.items() if n == name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator-log", required=True)
    ap.add_argument("--worker-log", action="append", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--request-id", required=True)
    a = ap.parse_args()

    lines = [l for l in open(a.input, encoding="utf-8") if l.strip()]
    records = [json.loads(l) for l in open(a.results, encoding="utf-8")]
    if len(records) != len(lines):
        fail(f"{len(records)} records for {len(lines)} lines")
    coord = metrics_address(a.coordinator_log)
    workers = [metrics_address(p) for p in a.worker_log]

    # K/V is released off the coordinator's lock, after the job completes: give it a moment.
    deadline = time.time() + 15
    while True:
        _, c = scrape(coord)
        ws = [scrape(w)[1] for w in workers]
        in_use = [value(w, "mesa_worker_kv_bytes_in_use") for w in ws]
        if (all(v == 0 for v in in_use) and value(c, "mesa_scheduler_kv_bytes_held") == 0) or time.time() > deadline:
            break
        time.sleep(0.2)
    if any(in_use):
        fail(f"K/V still in use on the workers after the job: {in_use}")
    if value(c, "mesa_scheduler_kv_bytes_held") != 0:
        fail("the coordinator still accounts K/V held after the job")

    n = len(lines)
    checks = {
        "items submitted": (value(c, "mesa_items_submitted_total"), n),
        "items done": (value(c, "mesa_items_done_total"), n),
        "items failed": (value(c, "mesa_items_failed_total"), 0),
        "jobs submitted": (value(c, "mesa_jobs_submitted_total"), 1),
        "jobs completed": (value(c, "mesa_jobs", state="completed"), 1),
        "jobs in progress": (value(c, "mesa_jobs", state="in_progress"), 0),
        "workers": (value(c, "mesa_workers"), len(workers)),
        "queued items": (value(c, "mesa_scheduler_queued_items"), 0),
        "running items": (value(c, "mesa_scheduler_running_items"), 0),
        "tasks in flight": (value(c, "mesa_scheduler_tasks_in_flight"), 0),
        "prompt tokens": (value(c, "mesa_prompt_tokens_total"), sum(r["prompt_tokens"] for r in records)),
        "generated tokens": (value(c, "mesa_generated_tokens_total"), sum(r["generated_tokens"] for r in records)),
        "final tasks ok": (value(c, "mesa_tasks_total", kind="final", outcome="ok"), n),
        "final task latencies": (value(c, "mesa_task_seconds_count", kind="final"), n),
        "chunk task latencies": (value(c, "mesa_task_seconds_count", kind="chunk"),
                                 value(c, "mesa_tasks_total", kind="chunk", outcome="ok")),
        "workers' final tasks": (sum(value(w, "mesa_worker_tasks_total", kind="final", outcome="ok") for w in ws), n),
        "workers' chunk tasks": (sum(value(w, "mesa_worker_tasks_total", kind="chunk", outcome="ok") for w in ws),
                                 value(c, "mesa_tasks_total", kind="chunk", outcome="ok")),
        "workers' generated tokens": (sum(value(w, "mesa_worker_generated_tokens_total") for w in ws),
                                      value(c, "mesa_generated_tokens_total")),
        "K/V bytes (coordinator == workers)": (total(c, "mesa_kv_transfer_bytes_total"),
                                               sum(total(w, "mesa_worker_kv_fetched_bytes_total") for w in ws)),
    }
    bad = {k: v for k, v in checks.items() if v[0] != v[1]}
    if bad:
        fail("metrics disagree with the run (got, want): " + json.dumps(bad))
    if value(c, "mesa_generated_tokens_total") <= 0:
        fail("no tokens generated")
    if value(c, "mesa_tasks_total", kind="chunk", outcome="ok") <= 0:
        fail("no chunk tasks: the job did not run spread")
    if total(c, "mesa_kv_transfer_bytes_total") <= 0:
        fail("no K/V moved between workers")
    buckets = [(float(dict(l)["le"]), v) for (nm, l), v in c.items()
               if nm == "mesa_task_seconds_bucket" and dict(l)["kind"] == "final"]
    buckets.sort()
    if buckets[-1] != (float("inf"), n) or any(a[1] > b[1] for a, b in zip(buckets, buckets[1:])):
        fail(f"final task latency buckets not cumulative up to +Inf = {n}: {buckets}")

    try:
        urllib.request.urlopen(f"http://{coord}/", timeout=5)
        fail("GET / answered 200")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            fail(f"GET / answered {e.code}, not 404")

    # The JSON event log: every line an object; each document followed from submit to result.
    events = []
    for i, line in enumerate(open(a.coordinator_log, encoding="utf-8")):
        try:
            e = json.loads(line)
        except json.JSONDecodeError as err:
            fail(f"coordinator log line {i + 1} is not JSON ({err}): {line!r}")
        for k in ("ts", "level", "event"):
            if k not in e:
                fail(f"coordinator log line {i + 1} has no {k}: {line!r}")
        events.append(e)
    mine = [e for e in events if e.get("job") == a.job]
    by = lambda name: [e for e in mine if e["event"] == name]
    if len(by("job.submitted")) != 1 or by("job.submitted")[0].get("request_id") != a.request_id:
        fail(f"job.submitted with the request id: {by('job.submitted')}")
    if len(by("job.completed")) != 1:
        fail("no job.completed line")
    submitted, done = by("item.submitted"), by("item.done")
    for name, evs in (("item.submitted", submitted), ("item.done", done)):
        if sorted(e["item"] for e in evs) != list(range(n)):
            fail(f"{name} lines for items {sorted(e['item'] for e in evs)}, want 0..{n - 1}")
        for e in evs:
            if e.get("request_id") != a.request_id or "custom_id" not in e:
                fail(f"{name} without request_id/custom_id: {e}")
    for e in done:
        if not e.get("worker") or not isinstance(e.get("attempt"), int):
            fail(f"item.done without worker/attempt: {e}")
    ids = {r["custom_id"] for r in records}
    if {e["custom_id"] for e in done} != ids:
        fail("item.done custom_ids differ from the records'")
    print(f"metrics agree: {n} items, {int(value(c, 'mesa_generated_tokens_total'))} tokens generated, "
          f"{int(total(c, 'mesa_kv_transfer_bytes_total'))} K/V bytes moved, {len(workers)} workers; "
          f"{len(events)} JSON log lines, each document followed from submit to result")


if __name__ == "__main__":
    main()
