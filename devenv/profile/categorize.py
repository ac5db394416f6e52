"""Reads `perf script -F comm,pid,tid,ip,sym` output and prints where the CPU
went: per process, then inside the API server by request kind. Frames are
matched by the Kubernetes packages' own function names."""

import collections
import sys


def stacks(path):
    head, frames = None, []
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            if line[0] not in " \t":
                if head:
                    yield head, frames
                head, frames = line.split(), []
            else:
                parts = line.split(None, 1)
                if len(parts) == 2:
                    frames.append(parts[1].strip())
    if head:
        yield head, frames


def kind(frames):
    j = " ".join(frames)
    if "gcBgMarkWorker" in j:
        return "Go GC (background mark)"
    if "go.etcd.io" in j:
        return "etcd"
    resource = (
        "custom resource" if "apiextensions-apiserver" in j or "customresource" in j
        else "Secret" if "registry/core/secret" in j
        else "Event" if "registry/core/event" in j
        else ""
    )
    verb = (
        "patch" if "patchResource" in j
        else "create" if "createHandler" in j or "CreateResource" in j
        else "update" if "UpdateResource" in j
        else "delete" if "DeleteResource" in j or "DeleteCollection" in j
        else "watch" if "cacheWatcher" in j or "serveWatch" in j or "WatchServer" in j
        else "get/list" if "GetResource" in j or "ListResource" in j
        else ""
    )
    if verb or resource:
        return f"{verb or 'other'} {resource or '(resource not on the stack)'}"
    if "crypto/tls" in j or "net/http" in j:
        return "HTTP/TLS (request not on the stack)"
    return "Go runtime / other"


def main():
    path, seconds, hz = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    per_process, in_cp, total = collections.Counter(), collections.Counter(), 0
    names = {}
    for head, frames in stacks(path):
        total += 1
        at = next(i for i, t in enumerate(head) if "/" in t and t.split("/")[0].isdigit())
        comm, pid = " ".join(head[:at]), head[at].split("/")[0]
        names.setdefault(pid, comm)
        per_process[pid] += 1
    # A second pass is cheaper than holding every stack: the API server is
    # the process with the most samples among fleetward-cp's.
    cp = [p for p, _ in per_process.most_common() if names[p].startswith("fleetward-cp")]
    if not total:
        sys.exit("no samples")
    for head, frames in stacks(path):
        if cp and any(t.startswith(cp[0] + "/") for t in head):
            in_cp[kind(frames)] += 1
    rate = hz * seconds  # samples of one fully busy core
    print(f"{total} samples over {seconds:.0f} s")
    print("\nCPU by process (cores):")
    for pid, n in per_process.most_common(8):
        print(f"  {n / rate:5.2f}  {names[pid]} (pid {pid})")
    print(f"  {total / rate:5.2f}  all (idle included, as 'swapper')")
    if cp:
        n_cp = sum(in_cp.values())
        print(f"\ninside the API server + etcd (pid {cp[0]}), share of its samples:")
        for k, n in in_cp.most_common(16):
            print(f"  {100 * n / n_cp:5.1f}%  {k}")


if __name__ == "__main__":
    main()
