"""Draws the loss curves that `cairn bench train --csv FILE` writes as a PNG.

Usage: infra/plot-curves.sh [LABEL=]CURVES.csv OUT.png [TITLE] [LABEL=MORE.csv ...]
       infra/plot-curves.sh --all CURVES.csv OUT.png [TITLE]
The CSV has a header `step,baseline_loss,cairn_loss,floor_nats`; a positive floor (the synthetic
corpus's entropy rate) is drawn as a dashed line. Each LABEL=MORE.csv adds the cairn curve of
another run under that label (a sweep against one baseline: the runs must share its baseline).
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curves(source):
    """(steps, baseline, cairn, floor) of one `--csv` file; floor is None unless positive."""
    steps, baseline, cairn, floor = [], [], [], None
    with open(source, newline="") as f:
        for row in csv.DictReader(f):
            steps.append(int(row["step"]))
            baseline.append(float(row["baseline_loss"]))
            cairn.append(float(row["cairn_loss"]))
            if float(row.get("floor_nats") or 0) > 0:
                floor = float(row["floor_nats"])
    return steps, baseline, cairn, floor


def plot_all(source, out, title):
    """Every loss column of one CSV (a run with peers or a --frontier sweep), one curve each."""
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"{source}: no rows", file=sys.stderr)
        return 1
    steps = [int(r["step"]) for r in rows]
    columns = [c for c in rows[0] if c not in ("step", "floor_nats")]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    shown = []
    for c in columns:
        values = [float(r[c]) for r in rows]
        label = "AdamW (best rate)" if c == "baseline_loss" else ("cairn" if c == "cairn_loss" else c)
        ax.plot(steps, values, marker=".", label=label, linewidth=2.2 if c.startswith("cairn") or c == "cairn_loss" else 1.2)
        shown += values[1:]
    if shown:
        ax.set_ylim(min(shown) * 0.98, min(max(shown), 2 * min(shown)) * 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


def split_label(arg):
    """(label, path) of `LABEL=PATH`; the label is empty when there is no `=`."""
    label, _, path = arg.rpartition("=")
    return label, path


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "--all":
        if len(sys.argv) < 4:
            print(__doc__, file=sys.stderr)
            return 2
        return plot_all(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else sys.argv[2])
    first_label, source = split_label(sys.argv[1])
    out = sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else source
    extra = []
    for arg in sys.argv[4:]:
        label, path = split_label(arg)
        if not label or not path:
            print(f"{arg!r}: LABEL=MORE.csv expected", file=sys.stderr)
            return 2
        extra.append((label, path))
    steps, baseline, cairn, floor = read_curves(source)
    if not steps:
        print(f"{source}: no rows", file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(steps, baseline, marker="o", label="AdamW, full batch (all-reduce baseline)")
    ax.plot(steps, cairn, marker="s", label=first_label or "cairn: DeMo workers, aggregated by verify")
    shown = baseline[1:] + cairn[1:]
    ours = dict(zip(steps, baseline))
    for label, path in extra:
        more_steps, more_baseline, more_cairn, _ = read_curves(path)
        if not more_steps:
            print(f"{path}: no rows", file=sys.stderr)
            return 1
        for step, loss in zip(more_steps, more_baseline):
            if step in ours and abs(ours[step] - loss) > 1e-6 * abs(loss):
                print(f"{path}: its baseline differs from {source}'s at step {step} "
                      f"({loss:.4f} against {ours[step]:.4f}); a sweep needs one baseline", file=sys.stderr)
                return 1
        ax.plot(more_steps, more_cairn, marker=".", label=label)
        shown += more_cairn[1:]
    if extra and shown:
        # A sweep's curves differ by a few percent; the shared initial loss would flatten them.
        ax.set_ylim(min(shown) * 0.98, max(shown) * 1.02)
        if len(steps) > 2:
            ax.set_xlim(steps[1] - 0.05 * (steps[-1] - steps[1]), steps[-1] + 0.05 * (steps[-1] - steps[1]))
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label=f"entropy floor {floor:.3f}")
    ax.set_xlabel("step (round)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small" if extra else None)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
