"""A worker for a kind with "pull": true: claims what is due, does the work, reports the outcome.
Usage: python3 worker.py http://127.0.0.1:3000 render   (WORKER_KEY=tk_... when auth is on)"""
import json, os, sys, time, urllib.error, urllib.request

base, kind, key = sys.argv[1], sys.argv[2], os.environ.get("WORKER_KEY")

def post(path, body):
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = "Bearer " + key
    request = urllib.request.Request(base + path, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)

def work(task):  # your work here: raise to have it retried; what it returns is the detail
    time.sleep(float(os.environ.get("WORK_SECONDS", "0")))
    print(json.dumps(task), flush=True)
    return {"worker": os.getpid()}

while True:
    for task in post("/api/v1/claims", {"kind": kind, "max": 10, "wait": "20s"})["claims"]:
        try:
            outcome = {"result": "completed", "detail": work(task)}
        except Exception as e:
            outcome = {"result": "retry", "detail": {"error": str(e)}, "retry_after": "5s"}
        try:
            post(f"/api/v1/task/{task['task_id']}/outcome", {"claim": task["claim"], **outcome})
        except urllib.error.HTTPError as e:  # 409: the claim lapsed; the task is retried
            print(task["task_id"], e.code, e.read().decode(), file=sys.stderr, flush=True)
