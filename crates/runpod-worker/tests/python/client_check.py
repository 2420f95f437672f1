"""Drives the local endpoint API of examples/echo_worker with the official `runpod` client.

Usage: client_check.py <plain base URL> <streaming base URL> <api key>
Exits non-zero (assertion) on the first mismatch; prints OK at the end.
"""
import sys
import time

import runpod

plain, streaming, key = sys.argv[1:4]
print("runpod", runpod.__version__, flush=True)

runpod.api_key = key
runpod.endpoint_url_base = plain + "/v2"
ep = runpod.Endpoint("local-ep")

# Wait for readiness the way a script would: health's `initializing` count.
deadline = time.time() + 60
while True:
    health = ep.health()
    if health["workers"]["initializing"] == 0 and health["workers"]["idle"] == 1:
        break
    assert time.time() < deadline, health
    time.sleep(0.1)
assert set(health["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}, health

# run_sync returns the output (and None for a failed job, as against the cloud).
assert ep.run_sync({"return": {"x": 1}}, timeout=60) == {"x": 1}
assert ep.run_sync({"input": {"return": [1, 2]}}, timeout=60) == [1, 2]
assert ep.run_sync({"fail": "nope"}, timeout=60) is None

# run + status + output.
job = ep.run({"sleep_ms": 500, "return": "later"})
assert job.status() in ("IN_QUEUE", "IN_PROGRESS"), job.status()
assert job.output(timeout=60) == "later"
assert job.status() == "COMPLETED"

# cancel a running job.
job = ep.run({"sleep_ms": 30000})
deadline = time.time() + 30
while job.status() != "IN_PROGRESS":
    assert time.time() < deadline
    time.sleep(0.05)
assert job.cancel()["status"] == "CANCELLED"
deadline = time.time() + 30
while job.status() != "CANCELLED":
    assert time.time() < deadline
    time.sleep(0.05)

# purge-queue: two jobs queued behind a busy worker.
busy = ep.run({"sleep_ms": 1500})
queued = [ep.run({"return": i}) for i in range(2)]
purged = ep.purge_queue()
assert purged == {"removed": 2, "status": "completed"}, purged
assert all(j.status() == "CANCELLED" for j in queued)
assert busy.output(timeout=60) == {"echo": {"sleep_ms": 1500}}

health = ep.health()
assert health["jobs"]["completed"] >= 4 and health["jobs"]["failed"] == 1, health

# A wrong key is refused with 401, which the client turns into RuntimeError.
try:
    runpod.Endpoint("local-ep", api_key="wrong-key").health()
except RuntimeError as err:
    assert "401" in str(err), err
else:
    raise AssertionError("wrong API key was accepted")

# stream() against a streaming handler.
runpod.endpoint_url_base = streaming + "/v2"
sep = runpod.Endpoint("local-ep")
job = sep.run({"chunks": ["a", {"b": 2}, "c"], "sleep_ms": 300})
assert list(job.stream()) == ["a", {"b": 2}, "c"]
assert job.status() == "COMPLETED"

print("OK", flush=True)
