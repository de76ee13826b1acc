#!/usr/bin/env python3
"""Re-verifies a caas-storage audit chain from its JSON-lines export, with nothing but the
Python standard library: one JSON object per line, the fields of `AuditEntry` (`audit_id`,
`tenant`, `sequence`, `action`, `actor`, `target`, `details`, `created_at_ms`,
`previous_hash`, `hash`), in sequence order, starting at sequence 1.

    python3 docs/audit_verify.py chain.jsonl

Exit status 0 and `ok: N entries, head <sequence> <hash>` when the chain is intact; 1 and the
first broken link otherwise. The encoding is described in docs/audit.md.
"""
import hashlib
import json
import sys

GENESIS = "0" * 64


def entry_hash(e):
    fields = [
        e["tenant"],
        str(e["sequence"]),
        e["audit_id"],
        e["action"],
        e["actor"],
        e["target"],
        e["details"],
        str(e["created_at_ms"]),
        e["previous_hash"],
    ]
    out = b"caas-audit-v1\n"
    for f in fields:
        b = f.encode("utf-8")
        out += str(len(b)).encode() + b":" + b + b"\n"
    return hashlib.sha256(out).hexdigest()


def main(path):
    previous, expected, head = GENESIS, 1, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            e = json.loads(line)
            if e["sequence"] != expected:
                print(f"broken at sequence {expected}: missing (next is {e['sequence']})")
                return 1
            if entry_hash(e) != e["hash"]:
                print(f"broken at sequence {expected}: altered")
                return 1
            if e["previous_hash"] != previous:
                print(f"broken at sequence {expected}: link mismatch")
                return 1
            previous, head, expected = e["hash"], e, expected + 1
    if head is None:
        print("ok: 0 entries")
    else:
        print(f"ok: {expected - 1} entries, head {head['sequence']} {head['hash']}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
