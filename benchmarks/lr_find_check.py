"""`make lr-find-check`: is `nst lr-find`'s recommendation within 3x of a full sweep's best lr?

Runs experiments/lr_find_check.yaml (full-length sweeps on three image pairs, resumable), picks
each pair's best lr by the finder's own rule applied at full length, runs the finder on the same
pair and writes the comparison to docs/lr_find/check.md (with the finder's plots).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlflow import MlflowClient

from pipelines.config.grid import find_config, load_experiment
from pipelines.execution.run import quiet_lightning
from pipelines.execution.sweep import run_experiment
from pipelines.lr_find import _probe, ascii_plot, fastest_keeping_content, find_lr, log_range, plot
from pipelines.tracking.store import resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lr-find-check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "lr_find")
    args = parser.parse_args(argv)
    quiet_lightning()
    uri = resolve_tracking_uri()
    experiment = load_experiment(find_config("lr_find_check.yaml", ROOT / "experiments"))
    sweep = run_experiment(experiment, tracking_uri=uri, progress=False)
    client = MlflowClient(uri)
    pairs: dict[tuple[str, str], list] = {}
    for point, result in sweep.results:
        c = point.config
        pairs.setdefault((c.content, c.styles[0]), []).append(
            _probe(client, result.run_id, c.optimizer.lr, result.status, c.content, c.size))
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# lr finder against full sweeps", "",
             "`make lr-find-check`: each pair's full sweep (experiments/lr_find_check.yaml: 500 Adam steps",
             "at 128 px) against `nst lr-find` on the same pair (13 probes from 0.01 to 100, 60 steps at",
             "64 px). Best = the lr whose final image keeps the content (coarse edge correlation >= 0.5)",
             "with the lowest J (at full length there is no step down: that is the answer the finder",
             "estimates).", "",
             "History, kept honest: the finder's first rule (the lowest-J probe that keeps the content) gave",
             "10 against a best of 3 (3.3×) on Grace Hopper × The Starry Night and 4.6 against 3 on × The Scream.",
             "The rule now steps one probe down from there (pipelines/lr_find.py says why). Those two pairs",
             "informed that change; × The Kiss was added afterwards as a pair the rule had not seen.", "",
             "| content | style | full sweep's best lr | finder's lr | ratio | within 3× |",
             "|---|---|---|---|---|---|"]
    details = []
    for (content, style), full in pairs.items():
        best = fastest_keeping_content(full)
        assert best is not None, f"no lr of the full sweep kept the content of {content}"
        base = {"content": content, "style": style, "size": 64, "iterations": 60, "snapshots": [0],
                "checkpoint_every": 0}
        name = f"lr_find_{Path(content).stem}_{Path(style).stem}"
        probes, chosen, _, _ = find_lr(base, log_range(0.01, 100, 13), tracking_uri=uri, name=name)
        figure = plot(probes, chosen, args.out / f"{Path(content).stem}_{Path(style).stem}.png")
        ratio = max(chosen.lr / best.lr, best.lr / chosen.lr)
        lines.append(f"| {Path(content).name} | {Path(style).name} | {best.lr:g} | {chosen.lr:g} | {ratio:.2f} "
                     f"| {'yes' if ratio <= 3 else 'NO'} |")
        details += ["", f"## {Path(content).stem} × {Path(style).stem}", "", "Full sweep:", "", "```",
                    ascii_plot(full, best, mark="best", what="final J"), "```", "", "Finder:", "", "```",
                    ascii_plot(probes, chosen), "```",
                    "", f"![finder]({figure.name})"]
    (args.out / "check.md").write_text("\n".join(lines + details) + "\n")
    print("\n".join(lines + details))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
