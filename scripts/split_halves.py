"""The two halves of an evaluation set, the one rule both scripts/eval-halves and
scripts/text-eval use to tune on one half and check on the other: the even half is the
photos at an even (0-based) row of the manifest, the odd half the rest.

    python scripts/split_halves.py MANIFEST DIR   # writes DIR/manifest_{whole,even,odd}.csv
"""
import csv
import shutil
import sys

manifest, out = sys.argv[1], sys.argv[2]
rows = list(csv.reader(open(manifest, newline="")))
shutil.copyfile(manifest, f"{out}/manifest_whole.csv")
for name, keep in (("even", 0), ("odd", 1)):
    with open(f"{out}/manifest_{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        w.writerows(r for i, r in enumerate(rows[1:]) if i % 2 == keep)
