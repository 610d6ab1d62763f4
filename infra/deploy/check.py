#!/usr/bin/env python3
"""The deployment files against the code they deploy (run by infra/deploy/check.sh, in `make test`).

  check.py consistency CAIRN   the Terraform policy's history prefixes and folders, the IAM
                               roles' writable prefixes and the bucket policy's conditions against
                               `cairn store layout` and docs/SECURITY.md; every cairn command line
                               in the compose file and the Kubernetes manifests against
                               `cairn SUBCOMMAND --help`
  check.py rehearse CAIRN      runs the compose file's services as processes on the S3 server the
                               environment names (AWS_ENDPOINT_URL, ...): the init job twice, both
                               workers and the validator for 3 rounds, the dashboard, then the
                               auditor's loop once; fails unless the audit says OK

Needs PyYAML and hcl2 (in the venv of infra/deploy/setup-tools.sh) and Debian's docker-compose.
"""
import glob
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import hcl2
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "infra", "deploy")
COMPOSE = os.path.join(DEPLOY, "compose", "compose.yaml")
TERRAFORM = os.path.join(DEPLOY, "terraform", "aws")
K8S = os.path.join(DEPLOY, "k8s")
problems = []


def problem(msg):
    problems.append(msg)
    print(f"check: FAIL {msg}", file=sys.stderr)


def ok(msg):
    print(f"check: ok {msg}", file=sys.stderr)


def run(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def compose_config():
    """The compose file as Docker Compose itself reads it (anchors merged, defaults filled)."""
    return yaml.safe_load(run(["docker-compose", "-f", COMPOSE, "config"]))


def layout(cairn, orgs=()):
    args = [cairn, "store", "layout"]
    for o in orgs:
        args += ["--organisation", o]
    rows, folders = {}, {}
    for line in run(args).splitlines():
        parts = line.split(None, 2)
        if parts[0] == "folder":
            folders[parts[2]] = parts[1]
        elif parts[0] not in ("mirror", "staging", "steps"):
            rows[parts[0]] = parts[1]
    return rows, folders


def norm(x):
    """hcl2 wraps every attribute's value in a one-element list; blocks are lists of dicts."""
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items() if not k.startswith("__")}
    if isinstance(x, list):
        if len(x) == 1 and not isinstance(x[0], dict):
            return norm(x[0])
        return [norm(v) for v in x]
    return x


def terraform():
    out = {}
    for f in sorted(glob.glob(os.path.join(TERRAFORM, "*.tf"))):
        with open(f) as fh:
            out[os.path.basename(f)] = hcl2.load(fh)
    return out


def policy_document(tf, name):
    """The statements of `data "aws_iam_policy_document" "name"`, by sid."""
    for doc in tf.values():
        for entry in doc.get("data", []):
            body = entry.get("aws_iam_policy_document", {}).get(name)
            if body is not None:
                return {st["sid"]: st for st in (norm(s) for s in body["statement"])}
    raise KeyError(f"no aws_iam_policy_document {name}")


def as_list(v):
    return v if isinstance(v, list) else [v]


def consistency(cairn):
    rows, _ = layout(cairn)
    history = sorted(p for p, kind in rows.items() if kind == "history")
    replaceable = sorted(p for p, kind in rows.items() if kind == "replaceable")
    tf = terraform()

    # 1. The bucket policy protects exactly cairn's history prefixes.
    locals_ = {k: norm(v) for doc in tf.values() for entry in doc.get("locals", []) for k, v in entry.items()}
    tf_history = sorted(as_list(locals_.get("history_prefixes", [])))
    if tf_history != history:
        problem(f"terraform history_prefixes {tf_history} != cairn store layout's history {history}")
    else:
        ok(f"the bucket policy protects cairn's history prefixes {history}")

    # 2. Its statements say what docs/SECURITY.md's policy says (the same actions and conditions).
    security = open(os.path.join(ROOT, "docs", "SECURITY.md")).read()
    section = security.split("## 6. The bucket policy (S3)", 1)[1]
    doc_policy = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))
    doc_st = {s["Sid"]: s for s in doc_policy["Statement"]}
    tf_st = policy_document(tf, "bucket")
    for sid, want in doc_st.items():
        have = tf_st.get(sid)
        if have is None:
            problem(f"the Terraform bucket policy lacks docs/SECURITY.md's statement {sid}")
            continue
        want_actions = sorted([want["Action"]] if isinstance(want["Action"], str) else want["Action"])
        if sorted(as_list(have["actions"])) != want_actions or have["effect"] != want["Effect"]:
            problem(f"{sid}: Terraform says {have['effect']} {have['actions']}, docs/SECURITY.md {want['Effect']} {want_actions}")
        want_cond = sorted((test, var, str(val).lower()) for test, kv in want.get("Condition", {}).items() for var, val in kv.items())
        have_cond = sorted((c["test"], c["variable"], str(c["values"]).lower()) for c in as_list(have.get("condition", [])))
        if want_cond != have_cond:
            problem(f"{sid}: Terraform's conditions {have_cond} != docs/SECURITY.md's {want_cond}")
        want_res = sorted(r.split("/RUN/", 1)[1] for r in want["Resource"])
        if sorted(p + "*" for p in history) != want_res:
            problem(f"{sid}: docs/SECURITY.md protects {want_res}, cairn's history is {history}")
        if have["resources"] != "${local.history_objects}":
            problem(f"{sid}: Terraform's statement covers {have['resources']}, not local.history_objects")
    if not problems:
        ok("the bucket policy's statements match docs/SECURITY.md section 6")
    

    # 3. Members may write every replaceable prefix, and under history only with the policy above.
    before = len(problems)
    member = policy_document(tf, "member")
    writable = [str(r) for st in member.values() if "s3:PutObject" in as_list(st["actions"])
                for r in as_list(st["resources"])]
    text = " ".join(writable)
    own = {"mirrors/": "mirrors/${each.value.folder}/*", "tmp/": "tmp/${each.value.folder}/*",
           "steps/": "steps/${each.value.folder}/*"}
    for prefix in history + replaceable:
        token = own.get(prefix, prefix.rstrip("/"))
        if token not in text:
            problem(f"the member roles cannot write {prefix} (as {token}), which cairn writes")
    # No organisation may write another's mirror, staging or steps folder.
    for shared in re.findall(r"/(?:mirrors|tmp|steps)/\*", text):
        problem(f"the member roles may write every organisation's {shared}")
    if len(problems) == before:
        ok("the member roles may write every prefix cairn writes, mirrors, staging and steps only in their own folder")

    # 4. The example's folders are what cairn computes for those names.
    tfvars = hcl2.load(open(os.path.join(TERRAFORM, "terraform.tfvars.example")))
    orgs = tfvars["organisations"]
    orgs = orgs[0] if isinstance(orgs, list) else orgs
    _, folders = layout(cairn, list(orgs))
    for name, o in orgs.items():
        if norm(o["folder"]) != folders[name]:
            problem(f"terraform.tfvars.example: {name}'s folder {o['folder']} != {folders[name]}")
    ok(f"terraform.tfvars.example's folders are cairn's ({', '.join(f'{k}={v}' for k, v in folders.items())})")

    # 5. Every cairn command line names a subcommand and flags that exist.
    lines = []
    for name, svc in compose_config()["services"].items():
        if svc.get("image", "").startswith("cairn:") and "entrypoint" not in svc:
            lines.append((f"compose {name}", svc["command"]))
    for f in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        for doc in yaml.safe_load_all(open(f)):
            for c in containers(doc):
                lines.append((f"{os.path.basename(f)} {c['name']}", c["args"]))
    before = len(problems)
    for where, argv in lines:
        help_text = run([cairn, argv[0], "--help"])
        for flag in (a for a in argv if a.startswith("--")):
            if not re.search(rf"(^|\s){re.escape(flag)}[\s,=]", help_text):
                problem(f"{where}: `cairn {argv[0]}` has no flag {flag}")
    if len(problems) == before:
        ok(f"{len(lines)} cairn command lines use only subcommands and flags that exist")


def containers(doc):
    if not doc:
        return []
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec.get("template", {}).get("spec", {}).get("containers", [])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rehearse(cairn):
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not os.environ.get(var):
            sys.exit(f"check: rehearse needs an S3 server in the environment ({var} is unset)")
    services = compose_config()["services"]
    work = tempfile.mkdtemp(prefix="cairn-compose-")
    store = f"s3://compose-{secrets.token_hex(4)}/run1"
    env = dict(os.environ, CAIRN_STORE=store, CAIRN_KEYS=f"{work}/keys", OMP_NUM_THREADS="1",
               PATH=f"{os.path.dirname(os.path.abspath(cairn))}:{os.environ['PATH']}")
    os.makedirs(f"{work}/keys")

    def subst(arg, name):
        arg = arg.replace("$$", "$").replace("s3://cairn/run1", store)
        arg = arg.replace("/var/lib/cairn/keys", f"{work}/keys")
        arg = arg.replace("/var/lib/cairn/state", f"{work}/state-{name}")
        return arg

    # The init job, twice: the second start must change nothing.
    init = os.path.join(DEPLOY, "compose", "init.sh")
    for attempt in (1, 2):
        r = subprocess.run(["bash", init], env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            problem(f"init.sh (start {attempt}) failed: {r.stderr[-2000:]}")
            return
    if "already has its genesis" not in r.stderr:
        problem("init.sh's second start did not find the genesis it wrote")
    ok(f"init.sh made the bucket, checked it, wrote 4 keys and the genesis of {store}, and a second start changed nothing")

    procs = {}
    logs = {}
    port = free_port()
    for name, svc in services.items():
        if not svc.get("image", "").startswith("cairn:") or "entrypoint" in svc:
            continue
        argv = [subst(a, name) for a in svc["command"]]
        argv = [f"127.0.0.1:{free_port()}" if a == "0.0.0.0:9100" else a for a in argv]
        if argv[0] in ("worker", "validate"):
            os.makedirs(f"{work}/state-{name}", exist_ok=True)
            argv += ["--rounds", "3"]
        if argv[0] == "dashboard":
            argv = [f"127.0.0.1:{port}" if a == "0.0.0.0:8080" else a for a in argv]
        logs[name] = open(f"{work}/{name}.log", "w")
        procs[name] = subprocess.Popen([cairn] + argv, env=env, stdout=logs[name], stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    try:
        for name, p in procs.items():
            if name == "dashboard":
                continue
            rc = p.wait(timeout=max(1, deadline - time.time()))
            if rc != 0:
                problem(f"compose service {name} exited {rc}: {open(logs[name].name).read()[-2000:]}")
        if problems:
            return
        ok(f"{', '.join(n for n in procs if n != 'dashboard')} took part in 3 rounds and exited 0")
        view = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/run", timeout=5) as resp:
                    view = json.load(resp)
                if view.get("ledger", {}).get("final_rounds", 0) >= 3:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        if not view or view.get("ledger", {}).get("final_rounds", 0) < 3:
            problem(f"the dashboard did not show 3 final rounds: {json.dumps(view)[:500]}")
        else:
            ok("the dashboard serves the run with its 3 final rounds")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    # The auditor's loop, once: `sleep` ends it after the first audit. Twice, so the second
    # audit checks the log against the witness the first one wrote.
    aud = services["auditor"]
    script = "sleep() { exit 0; }; " + subst(aud["command"][0], "auditor")
    os.makedirs(f"{work}/state-auditor", exist_ok=True)
    for attempt in (1, 2):
        r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
        last = r.stdout.strip().splitlines()[-1:] or [""]
        if not last[0].startswith("audit: OK"):
            problem(f"the auditor (run {attempt}) said {last[0]!r}: {r.stderr[-2000:]}")
            return
    ok(f"the auditor's loop printed `{last[0][:80]}` twice, the second time against its witness")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("consistency", "rehearse"):
        sys.exit("usage: check.py consistency|rehearse CAIRN")
    {"consistency": consistency, "rehearse": rehearse}[sys.argv[1]](sys.argv[2])
    if problems:
        sys.exit(f"check: {len(problems)} problem(s)")
