"""What fedurl-simulate writes: metrics.csv, personalization.csv, summary.json, PNG plots, the split.

Kept apart from study/simulate.py so the simulation reads as the protocol and this as bookkeeping.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

PLOTS = {  # file -> (title, y label, [(metrics.csv column, legend label)])
    "accuracy.png": ("Held-out next-piece accuracy", "accuracy",
                     [("fed_top1", "federated top-1"), ("fed_top3", "federated top-3"),
                      ("central_top1", "centralized top-1"), ("central_top3", "centralized top-3")]),
    "loss.png": ("Held-out loss (mean NLL per piece)", "loss",
                 [("fed_loss", "federated"), ("central_loss", "centralized")]),
    "clients.png": ("Clients per round", "updates aggregated", [("clients", "clients")]),
    "upload.png": ("Bytes uploaded per round", "MB", [("upload_bytes", "uploaded")]),
}

COLORS = {"top1": "tab:blue", "top3": "tab:orange", "loss": "tab:red"}


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as CSV with the union of their keys as the header (first-seen order)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def plot_rounds(rows: list[dict], out: Path) -> list[str]:
    """One small PNG per entry of PLOTS, x = round; bars for the counts, lines for the metrics."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    for name, (title, ylabel, series) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        for column, label in series:
            points = [(row["round"], row[column]) for row in rows if row.get(column, "") != ""]
            if column in ("clients", "upload_bytes"):
                points = [(r, v / 1e6 if column == "upload_bytes" else v) for r, v in points if r > 0]
                ax.bar([r for r, _ in points], [v for _, v in points], label=label)
            elif points:  # one colour per metric; federated solid, centralized dashed
                style = "--" if column.startswith("central") else "-"
                color = COLORS[column.rsplit("_", 1)[-1]]
                ax.plot(*zip(*points, strict=True), style, color=color, marker=".", label=label)
        ax.set(title=title, xlabel="round", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(name)
    return written


def personal_summary(results: list[dict]) -> dict:
    """Means over the sampled clients (each client counts once) and the gain of fine-tuning."""
    if not results:
        return {}
    mean = {key: float(np.mean([r[key] for r in results]))
            for key in ("ksr_global", "ksr_personal", "ksr_own_trie", "loss_global", "loss_personal")}
    gains = [r["ksr_personal"] - r["ksr_global"] for r in results]
    return {"clients": len(results), "later_urls": sum(r["later"] for r in results), **mean,
            "ksr_gain": float(np.mean(gains)), "clients_improved": sum(g > 0 for g in gains)}


def write_outputs(args, split, rows: list[dict], table: dict, personal: list[dict], model_bytes: int,
                  extra: dict | None = None) -> dict:
    """Write everything under args.out; return the summary (also saved as summary.json).

    :param extra: more top-level sections of summary.json (e.g. "privacy").
    """
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("".join(url + "\n" for url in split.train))
    (out / "test.txt").write_text("".join(url + "\n" for url in split.test))
    write_csv(out / "metrics.csv", rows)
    if personal:
        write_csv(out / "personalization.csv", personal)
    sizes = [len(client.history) for client in split.clients]
    updates = sum(row["clients"] for row in rows)
    summary = {
        "settings": {key: str(value) if isinstance(value, Path) else value
                     for key, value in vars(args).items()},
        "split": {"clients": len(split.clients), "train_urls": len(split.train), "test_urls": len(split.test),
                  "history_min_median_max": [min(sizes), int(np.median(sizes)), max(sizes)],
                  "host_skew_tv": split.skew, "iid_skew_tv": split.iid_skew},
        "training": {"rounds": len(rows) - 1, "updates": updates, "steps": sum(row["steps"] for row in rows),
                     "examples": sum(row["examples"] for row in rows),
                     "central_examples": sum(row.get("central_examples", 0) for row in rows),
                     "upload_bytes": sum(row["upload_bytes"] for row in rows),
                     "bytes_per_update": sum(row["upload_bytes"] for row in rows) / max(updates, 1),
                     "model_float32_bytes": model_bytes},
        "held_out": table, "personalization": personal_summary(personal),
        "plots": plot_rounds(rows, out), **(extra or {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """The result tables as text: held-out rows, then the personalization gain."""
    lines = [f"{'held-out':12} {'loss':>7} {'top-1':>7} {'top-3':>7} {'KSR@3':>7}"]
    for name, m in summary["held_out"].items():
        lines.append(f"{name:12} " + " ".join(_cell(m.get(key)) for key in ("loss", "top1", "top3", "ksr@3")))
    p = summary["personalization"]
    if p:
        lines.append(f"personalization ({p['clients']} clients, {p['later_urls']} later URLs): KSR@3 "
                     f"{p['ksr_global']:.3f} global -> {p['ksr_personal']:.3f} fine-tuned "
                     f"(gain {p['ksr_gain']:+.3f}, {p['clients_improved']} improved; own trie "
                     f"{p['ksr_own_trie']:.3f}); loss {p['loss_global']:.3f} -> {p['loss_personal']:.3f}")
    s, t = summary["split"], summary["training"]
    lines.append(f"split: {s['clients']} clients, host skew TV {s['host_skew_tv']:.3f} "
                 f"(IID split of the same sizes {s['iid_skew_tv']:.3f}); {t['updates']} updates, "
                 f"{t['bytes_per_update'] / 1e6:.3f} MB each "
                 f"(float32 model {t['model_float32_bytes'] / 1e6:.3f} MB)")
    lines.append(f"{t['steps']} SGD steps: {t['examples']:,} examples in the clients' steps, "
                 f"{t['central_examples']:,} in the centralized ones")
    return "\n".join(lines)


def _cell(value) -> str:
    """A table cell: three decimals, or '-' where the row has no such number."""
    return f"{value:7.3f}" if isinstance(value, float) else f"{'-':>7}"


def print_summary(summary: dict) -> None:
    """Print format_summary to stdout."""
    print(format_summary(summary))
