# crabbox's Modal client, shipped inside the binary and run as
# `python3 -c <this program>` with one JSON request on stdin (never on the
# command line: command environments are in it). Modal's own auth applies:
# MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or ~/.modal.toml, read by the package.
#
# Ops: create, exec, upload, list, terminate. A result is one JSON line,
# the last non-empty line of stdout (exec streams the command's output
# instead and writes its exit status to `result_path`). Exit 125: the call
# to Modal failed (the message is on stderr).
#
# Every Modal call here is checked against the real package's signatures by
# tests/fixtures/modal_signatures.py; keep the two in step.

import json
import sys
import threading

TRANSPORT_EXIT = 125


def fail(exc):
    print("modal python client: %s" % exc, file=sys.stderr)
    sys.exit(TRANSPORT_EXIT)


def lookup_app(modal, req):
    return modal.App.lookup(
        req["app"],
        create_if_missing=True,
        environment_name=req.get("environment") or None,
    )


def sandbox_json(sb):
    try:
        rc = sb.poll()
    except Exception:
        rc = None
    return {
        "id": sb.object_id,
        "status": "running" if rc is None else "finished",
        "tags": sb.get_tags() or {},
    }


def run(sb, argv, workdir=None, env=None, timeout=None, out=None, err=None):
    """Runs argv in the sandbox; its output copied to out/err as it comes."""
    kwargs = {}
    if workdir:
        kwargs["workdir"] = workdir
    if env:
        kwargs["env"] = env
    if timeout:
        kwargs["timeout"] = timeout
    proc = sb.exec(*argv, **kwargs)
    errors = []

    def copy(src, dst):
        try:
            for chunk in src:
                if dst is not None:
                    dst.write(chunk if isinstance(chunk, bytes) else chunk.encode())
                    dst.flush()
        except Exception as exc:  # the stream broke: a transport failure
            errors.append(str(exc))

    threads = [
        threading.Thread(target=copy, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=copy, args=(proc.stderr, err), daemon=True),
    ]
    for t in threads:
        t.start()
    rc = proc.wait()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("stream copy failed: %s" % "; ".join(errors))
    return 0 if rc is None else int(rc)


def create(modal, req):
    app = lookup_app(modal, req)
    kwargs = {
        "app": app,
        "image": modal.Image.from_registry(req["image"]),
        "timeout": int(req["timeout_seconds"]),
        "workdir": req["workdir"],
        "tags": req["tags"],
    }
    if req.get("gpu"):
        kwargs["gpu"] = req["gpu"]
    if req.get("secrets"):
        kwargs["secrets"] = [
            modal.Secret.from_name(name, environment_name=req.get("environment") or None)
            for name in req["secrets"]
        ]
    sb = modal.Sandbox.create(**kwargs)
    out = sandbox_json(sb)
    rc = run(sb, ["mkdir", "-p", req["workdir"]], err=sys.stderr.buffer)
    if rc != 0:
        sb.terminate()
        raise RuntimeError("creating the workdir %s exited %d" % (req["workdir"], rc))
    sb.detach()
    return out


def exec_op(modal, req):
    sb = modal.Sandbox.from_id(req["sandbox_id"])
    rc = run(
        sb,
        ["bash", "-lc", req["script"]],
        workdir=req["workdir"],
        env=req.get("env") or None,
        timeout=int(req.get("timeout") or 0) or None,
        out=sys.stdout.buffer,
        err=sys.stderr.buffer,
    )
    with open(req["result_path"], "w", encoding="utf-8") as f:
        f.write(str(rc))
    return None


def upload(modal, req):
    sb = modal.Sandbox.from_id(req["sandbox_id"])
    remote = req["remote_path"]
    sb.filesystem.make_directory(req["workdir"], create_parents=True)
    sb.filesystem.copy_from_local(req["local_path"], remote)
    rc = run(sb, ["tar", "-xzf", remote, "-C", req["workdir"]], err=sys.stderr.buffer)
    sb.filesystem.remove(remote)
    if rc != 0:
        raise RuntimeError("unpacking the sync archive exited %d" % rc)
    return {"ok": True}


def list_op(modal, req):
    app = lookup_app(modal, req)
    return [sandbox_json(sb) for sb in modal.Sandbox.list(app_id=app.app_id, tags=req["tags"])]


def terminate(modal, req):
    sb = modal.Sandbox.from_id(req["sandbox_id"])
    sb.terminate()
    sb.detach()
    return {"ok": True}


OPS = {"create": create, "exec": exec_op, "upload": upload, "list": list_op, "terminate": terminate}


def main():
    try:
        req = json.loads(sys.stdin.read())
        op = OPS[req["op"]]
    except Exception as exc:
        print("modal python client: bad request: %s" % exc, file=sys.stderr)
        sys.exit(2)
    try:
        import modal
    except ImportError as exc:
        print("modal python client: the `modal` package is not installed for this Python (%s): %s" % (sys.executable, exc), file=sys.stderr)
        sys.exit(3)
    try:
        result = op(modal, req)
    except Exception as exc:
        fail(exc)
    if result is not None:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")


main()
