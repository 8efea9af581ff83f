"""Scenario 13's rollout watcher and checker.

Watch: every ~0.5 s until STOPFILE exists (or MAX_SECONDS): the index's pods (uid, Ready,
being deleted, image), the VectorIndex phase and Progressing condition, and each pod's Raft
role read from its own /metrics (kindex_raft_role 3 = leader, so a transfer is seen when the
nodes see it, not when the operator next writes status). One JSON line per sample to OUT,
and "UNIX_SECONDS LEADER_SHARD_0 LEADER_SHARD_1" lines to OUT.leaders (for write_gaps.py).
  rollout_watch.py watch KUBECTL NS INDEX STOPFILE OUT MAX_SECONDS

Check: from OUT, per shard: every pod was replaced exactly once (a new uid); while it was
being deleted (its preStop sleep, 5 s) its own Raft role was not leader (followers first;
the leader only after leadership moved away); every other pod of the shard was Ready at its
deletionTimestamp (Ready's lastTransitionTime no later; both are API times, 1 s
resolution), and so was the new pod of the one replaced before it in that shard; the phase
went Ready -> Upgrading (Progressing True, nothing else in between) -> Ready.
  rollout_watch.py check OUT SHARDS REPLICAS
Prints the order per shard; exit 1 on any violation."""
import json
import os
import subprocess
import sys
import time
import urllib.request


def get(kubectl, ns, *args):
    out = subprocess.run([kubectl, "-n", ns, "get", *args, "-o", "json"],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else None


def role(ip):
    try:
        with urllib.request.urlopen(f"http://{ip}:7080/metrics", timeout=1) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("kindex_raft_role "):
                    return int(float(line.split()[1]))
    except Exception:
        return None
    return None


def watch(kubectl, ns, index, stop, out, max_seconds):
    start = time.time()
    with open(out, "w") as f, open(out + ".leaders", "w") as lf:
        while not os.path.exists(stop) and time.time() - start < max_seconds:
            pods = get(kubectl, ns, "pods", "-l", f"app.kubernetes.io/instance={index}")
            vi = get(kubectl, ns, "vectorindex", index)
            if pods is None or vi is None:
                time.sleep(0.5)
                continue
            t = time.time()
            sample = {"t": round(t, 3), "pods": {}, "leaders": {}}
            for p in pods["items"]:
                name = p["metadata"]["name"]
                st = p.get("status") or {}
                ready = any(c["type"] == "Ready" and c["status"] == "True"
                            for c in st.get("conditions") or [])
                deleting = bool(p["metadata"].get("deletionTimestamp"))
                since = next((c.get("lastTransitionTime") for c in st.get("conditions") or []
                              if c["type"] == "Ready" and c["status"] == "True"), None)
                ip = st.get("podIP")
                r = role(ip) if ip else None
                sample["pods"][name] = {
                    "uid": p["metadata"]["uid"], "ready": ready, "deleting": deleting,
                    "readySince": since, "deletedAt": p["metadata"].get("deletionTimestamp"),
                    "image": p["spec"]["containers"][0]["image"], "role": r}
                shard = name.rsplit("-", 2)[1][1:]  # <index>-s<shard>-<ordinal>
                if r == 3 and (not deleting or shard not in sample["leaders"]):
                    sample["leaders"][shard] = name
            vst = vi.get("status") or {}
            prog = next((c for c in vst.get("conditions") or [] if c["type"] == "Progressing"), {})
            sample["phase"] = vst.get("phase")
            sample["progressing"] = [prog.get("status"), prog.get("reason")]
            f.write(json.dumps(sample) + "\n")
            f.flush()
            shards = sorted({n.rsplit("-", 2)[1][1:] for n in sample["pods"]}, key=int)
            lf.write(f"{t:.3f} " + " ".join(sample["leaders"].get(s, "-") for s in shards) + "\n")
            lf.flush()
            time.sleep(0.5)


def check(out, shards, replicas):
    samples = [json.loads(line) for line in open(out) if line.strip().endswith("}")]
    if not samples:
        sys.exit("no samples")
    bad = []
    first = samples[0]["pods"]
    index = next(iter(first)).rsplit("-", 2)[0]
    for s in range(shards):
        names = [f"{index}-s{s}-{o}" for o in range(replicas)]
        if any(n not in first for n in names):
            sys.exit(f"shard {s}: the first sample lacks some of {names}")
        # When each pod's replacement began: first sample where it is deleting, gone or new.
        began = {}
        for i, smp in enumerate(samples):
            for n in names:
                p = smp["pods"].get(n)
                if n in began:
                    continue
                if p is None or p["deleting"] or p["uid"] != first[n]["uid"]:
                    began[n] = i
        order = sorted(began, key=began.get)
        print(f"shard {s}: replaced in order {', '.join(order)}; initial leader "
              f"{samples[0]['leaders'].get(str(s), '-')}")
        missing = set(names) - set(began)
        if missing:
            bad.append(f"shard {s}: never replaced: {sorted(missing)}")
        for n in names:
            uids = {smp["pods"][n]["uid"] for smp in samples if n in smp["pods"]}
            if len(uids) > 2:
                bad.append(f"{n}: replaced more than once ({len(uids)} uids)")
        for k, n in enumerate(order):
            i = began[n]
            if i == 0:
                bad.append(f"{n}: already being replaced at the first sample")
                continue
            # The old pod while it was being deleted: its deletion time and its own role.
            dying = [smp["pods"][n] for smp in samples[i:]
                     if n in smp["pods"] and smp["pods"][n]["uid"] == first[n]["uid"]]
            deleted_at = next((p["deletedAt"] for p in dying if p["deletedAt"]), None)
            if deleted_at is None:
                bad.append(f"{n}: its deletion was not seen (no sample during its preStop)")
                continue
            roles = [p["role"] for p in dying if p["role"] is not None]
            if 3 in roles:
                bad.append(f"{n}: deleted at {deleted_at} while it led shard {s}")
            # Every other pod of the shard Ready at that time: a pod seen Ready with a
            # transition no later than the deletion, in the first sample after it.
            for m in names:
                if m == n:
                    continue
                p = next((smp["pods"].get(m) for smp in samples[i:] if m in smp["pods"]), None)
                if p is None or not p["ready"] or p["readySince"] is None \
                        or p["readySince"] > deleted_at or \
                        (m in began and began[m] < i and p["uid"] == first[m]["uid"]):
                    bad.append(f"{n}: deleted at {deleted_at} while {m} was not ready "
                               f"({p and {k2: p[k2] for k2 in ('ready', 'readySince')}})")
            print(f"  {n}: deleted at {deleted_at}, role while stopping {sorted(set(roles))}")

    phases = [(smp["phase"], tuple(smp["progressing"])) for smp in samples]
    if not any(ph == "Upgrading" and pr[0] == "True" for ph, pr in phases):
        bad.append("never phase Upgrading with Progressing True")
    if phases[-1][0] != "Ready":
        bad.append(f"last phase {phases[-1][0]}, want Ready")
    seen = []
    for ph, pr in phases:
        if not seen or seen[-1] != (ph, pr):
            seen.append((ph, pr))
    print("phases: " + " -> ".join(f"{ph} (Progressing {pr[0]} {pr[1]})" for ph, pr in seen))
    # Ready, then Upgrading (Progressing True) the whole rollout, then Ready: never Scaling
    # or Degraded while the last restarted pod comes back.
    names = [ph for ph, _ in seen]
    while names and names[0] == "Ready":
        names.pop(0)
    while names and names[-1] == "Ready":
        names.pop()
    if any(ph != "Upgrading" for ph in names) or \
            any(pr[0] != "True" for ph, pr in seen if ph == "Upgrading"):
        bad.append("the phase was not Upgrading with Progressing True for the whole rollout")
    for b in bad:
        print("VIOLATION " + b)
    sys.exit(1 if bad else 0)


if sys.argv[1] == "watch":
    watch(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], float(sys.argv[7]))
else:
    check(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
