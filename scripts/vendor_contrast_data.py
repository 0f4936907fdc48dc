#!/usr/bin/env python3
"""Copies the contrastive-stage data into data/contrast/ from the shared
data sets (see data/contrast/LICENSE.md for sources and licences).

SNLI dev/test triples share sentences with STS-B dev/test (its track5 pairs
were drawn from SNLI), so every triple with a sentence that also occurs in
STS-B dev or test (compared lower-cased, letters and digits only, since SNLI
is tokenised and STS-B is not) is dropped: stage 3 then never sees an STS-B
evaluation sentence.

usage: scripts/vendor_contrast_data.py SHARED_DATA_DIR
"""
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path


def norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def main() -> None:
    shared = Path(sys.argv[1])
    out = Path(__file__).resolve().parent.parent / "data" / "contrast"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared / "text/wiki1m_head.txt", out / "wiki1m_head.txt")

    sts = set()
    for split in ("dev", "test"):
        lines = (shared / f"sts/stsb/{split}.tsv").read_text(encoding="utf-8").splitlines()
        for line in lines[1:]:
            _, a, b = line.split("\t")
            sts.add(norm(a))
            sts.add(norm(b))
    kept, dropped = [], 0
    for line in (shared / "pairs/snli_devtest_triplets.jsonl").read_text(encoding="utf-8").splitlines():
        t = json.loads(line)
        if any(norm(t[k]) in sts for k in ("query", "positive", "negative")):
            dropped += 1
            continue
        kept.append(line)
    dst = out / "snli_triples_no_stsb.jsonl"
    dst.write_text("".join(l + "\n" for l in kept), encoding="utf-8")
    for f in sorted(out.glob("*.txt")) + sorted(out.glob("*.jsonl")):
        h = hashlib.sha256(f.read_bytes()).hexdigest()
        n = sum(1 for _ in f.open(encoding="utf-8"))
        print(f"{f.name}: {n} lines, sha256 {h}")
    print(f"SNLI triples: {len(kept)} kept, {dropped} dropped (a sentence also in STS-B dev/test)")


if __name__ == "__main__":
    main()
