"""Draws the loss curves that `cairn bench train --csv FILE` writes as a PNG.

Usage: infra/plot-curves.sh CURVES.csv OUT.png [TITLE]
The CSV has a header `step,baseline_loss,cairn_loss,floor_nats`; a positive floor (the synthetic
corpus's entropy rate) is drawn as a dashed line.
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, out = sys.argv[1], sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else source
    steps, baseline, cairn, floor = [], [], [], None
    with open(source, newline="") as f:
        for row in csv.DictReader(f):
            steps.append(int(row["step"]))
            baseline.append(float(row["baseline_loss"]))
            cairn.append(float(row["cairn_loss"]))
            if float(row.get("floor_nats") or 0) > 0:
                floor = float(row["floor_nats"])
    if not steps:
        print(f"{source}: no rows", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(steps, baseline, marker="o", label="AdamW, full batch (all-reduce baseline)")
    ax.plot(steps, cairn, marker="s", label="cairn: DeMo workers, aggregated by verify")
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label=f"entropy floor {floor:.3f}")
    ax.set_xlabel("step (round)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
