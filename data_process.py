"""Check CAMELS-GB and write the model input data that every other stage reads.

The per-basin arrays, a ``manifest.json`` (source file hashes, the settings used, what was reused)
and an ``attributes.csv`` of the chosen static attributes go to ``INPUT_DIR/<data folder>-<hash>/``.
Re-running with the same inputs reuses everything; a changed source file rebuilds that basin.

Usage::

    python data_process.py --data_dir ../shared/camels_gb           # the basins of run.config
    python data_process.py --basins all --workers 8 --overwrite     # every basin, rebuilt
    python data_process.py --demo                                   # synthetic demo data
    python data_process.py --make_demo --demo_dir /tmp/camels_demo # only write the demo data
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import hydrologyDataset as hd
from utils import (
    BASIN_KEYS,
    PERIODS,
    UserError,
    add_common_args,
    csv_list,
    load_config,
    log,
    period,
    positive_int,
    run_cli,
    setup_logging,
    show_config_defaults,
    warn_synthetic,
    write_csv,
    write_json,
)

MANIFEST = "manifest.json"
ATTRIBUTES_CSV = "attributes.csv"
GROUP_PERIOD = {"TRAIN_BASINS": "train", "VAL_BASINS": "validation", "TEST_BASINS": "test"}
PERIOD_KEY = {name: key for key, name in GROUP_PERIOD.items()}


def _basins_arg(text: str) -> list[str] | str:
    return "all" if text.strip().lower() == "all" else csv_list(text)


def build_parser() -> argparse.ArgumentParser:
    """The command line of data_process.py."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(parser, device=False, output_dir=False)
    parser.add_argument(
        "--basins",
        type=_basins_arg,
        help="gauge ids, comma-separated, or 'all' for every basin of the data folder "
        "(default: TRAIN_BASINS + VAL_BASINS + TEST_BASINS)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=min(4, os.cpu_count() or 1),
        help="processes that read the CSV files in parallel (default: min(4, CPU count))",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild every basin even if it is up to date"
    )
    demo = parser.add_argument_group("synthetic demo data")
    demo.add_argument(
        "--demo",
        action="store_true",
        help=f"process the synthetic demo data in {hd.DEMO_DIR} (written first if missing)",
    )
    demo.add_argument(
        "--make_demo",
        action="store_true",
        help="only write a synthetic dataset in the CAMELS-GB layout (into --demo_dir) and exit",
    )
    demo.add_argument(
        "--demo_dir", help=f"where --make_demo writes the demo data (default {hd.DEMO_DIR})"
    )
    show_config_defaults(parser, "data_process")
    return parser


# --------------------------------------------------------------------------- steps


def _chosen_basins(
    arg: list[str] | str | None, config: dict, source: hd.CamelsGBSource
) -> list[str]:
    if arg == "all":
        return source.basins
    if arg is None:
        basins = [b for key in BASIN_KEYS for b in config[key]]
        hint = "they come from TRAIN_BASINS/VAL_BASINS/TEST_BASINS; fix those or pass --basins"
    else:
        basins = arg
        hint = "fix --basins (or pass --basins all)"
    try:
        return list(dict.fromkeys(source.check_basins(basins)))
    except UserError as err:
        raise UserError(f"{err}; {hint}") from None


def _make_demo(args: argparse.Namespace) -> Path:
    root = Path(args.demo_dir).expanduser() if args.demo_dir else hd.DEMO_DIR
    if root.exists() and not root.is_dir():
        raise UserError(f"--demo_dir {root} is a file; give a new or empty folder")
    if root.is_dir() and any(root.iterdir()) and not (root / hd.SYNTHETIC_MARKER).is_file():
        raise UserError(
            f"{root} is not empty and does not hold the toolkit's demo data; give --demo_dir a "
            "new or empty folder (real data is never overwritten)"
        )
    kwargs = {}
    if isinstance(args.basins, list):
        if not all(b.isdigit() for b in args.basins):
            raise UserError(f"--basins {','.join(args.basins)}: gauge ids are digits only")
        kwargs["basin_ids"] = args.basins
    try:
        basins = hd.write_demo_dataset(root, **kwargs)
    except (ValueError, FileExistsError) as err:
        raise UserError(f"cannot write the demo data to {root}: {err}") from None
    log.warning(f"wrote SYNTHETIC demo data (not CAMELS-GB) for {len(basins)} basin(s) to {root}")
    return root


def check_periods(config: dict, data: hd.InputData) -> None:
    """Check that every processed basin has observed target in the periods of its groups.

    A period partly outside a basin's record, or two overlapping periods on a basin that is in
    both of their groups, is logged as a warning for that basin only.

    Raises
    ------
    UserError
        A period outside a basin's record, or one without any observed target, naming each
        basin, the period and the keys to change.
    """
    target = config["TARGET"]
    problems = []
    for key, name in GROUP_PERIOD.items():
        start, end = period(config, name)
        k_start, k_end = PERIODS[name]
        for basin in (b for b in config[key] if b in data.basins):
            b = data.basins[basin]
            if end < b.start or start > b.end:
                problems.append(
                    f"the {name} period {start}..{end} lies outside the data of basin {basin} "
                    f"({b.start}..{b.end}): change {k_start}/{k_end} or drop {basin} from {key}"
                )
                continue
            if start < b.start or end > b.end:
                log.warning(
                    f"basin {basin}: the {name} period {start}..{end} reaches beyond its data "
                    f"({b.start}..{b.end}); only the overlap is used"
                )
            n_obs = int(np.isfinite(b.column(target)[b.rows(start, end)]).sum())
            if n_obs == 0:
                problems.append(
                    f"basin {basin} ({b.name}) has no observed {target} in the {name} period "
                    f"{start}..{end}: drop it from {key} or change {k_start}/{k_end}"
                )
    if problems:
        raise UserError("; ".join(problems))
    names = list(GROUP_PERIOD.values())
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            (s1, e1), (s2, e2) = period(config, first), period(config, second)
            if s1 > e2 or s2 > e1:
                continue
            both = [
                b
                for b in config[PERIOD_KEY[first]]
                if b in config[PERIOD_KEY[second]] and b in data.basins
            ]
            if both:
                log.warning(
                    f"the {first} and {second} periods overlap ({max(s1, s2)}..{min(e1, e2)}) "
                    f"on basin(s) {', '.join(both)}, which are in both groups: their {second} "
                    f"scores are not independent of the {first} data"
                )


def _attribute_frame(data: hd.InputData, basins: list[str], attributes: list[str]) -> pd.DataFrame:
    values = hd.static_matrix(data.attributes, basins, attributes)
    frame = pd.DataFrame(values, columns=attributes)
    frame.insert(0, "gauge_id", basins)
    frame.insert(1, "gauge_name", [data.basins[b].name for b in basins])
    if "area" not in attributes:
        frame.insert(2, "area", [data.basins[b].area for b in basins])
    return frame


def _summary(data: hd.InputData, records: dict, rebuilt: set[str], target: str) -> None:
    log.info(f"per basin ('missing' is the share of days without observed {target}):")
    log.info(
        f"{'basin':<7} {'gauge name':<32} {'first':<10} {'last':<10} {'days':>6} "
        f"{'missing':>8}  status"
    )
    for basin, b in data.basins.items():
        missing = 100.0 * records[basin]["missing"][target] / max(1, len(b.values))
        status = "rebuilt" if basin in rebuilt else "reused"
        log.info(
            f"{basin:<7} {b.name[:32]:<32} {b.start!s:<10} {b.end!s:<10} "
            f"{len(b.values):>6} {missing:>7.1f}%  {status}"
        )


# --------------------------------------------------------------------------- main


@dataclass
class ProcessJob:
    """What :func:`prepare` checked: the config, the source files and the basins to process."""

    config: dict
    data_dir: Path
    source: hd.CamelsGBSource
    basins: list[str]


def prepare(
    config: dict,
    data_dir: str | Path | None = None,
    basins: list[str] | str | None = None,
    demo: bool = False,
) -> ProcessJob:
    """Find the data, check the basins and their static attributes; writes nothing.

    ``data_dir`` None: DATA_DIR of the config (or ``$CAMELS_GB_DIR``); ``basins`` None: the
    config's basin groups, ``"all"``: every basin of the data folder; ``demo``: the demo data.
    """
    data_dir = hd.resolve_data_dir(data_dir, config, demo=demo)
    source = hd.find_source(data_dir)
    warn_synthetic(source.synthetic, str(source.root))
    basins = _chosen_basins(basins, config, source)
    log.info(
        f"data folder {source.root}; {len(basins)} basin(s); inputs "
        f"{', '.join(config['DYNAMIC_INPUTS'])}; target {config['TARGET']}; static attributes "
        f"{', '.join(config['STATIC_ATTRIBUTES'])}"
    )
    hd.static_matrix(hd.read_attributes(source), basins, config["STATIC_ATTRIBUTES"])
    leaky = sorted(set(config["STATIC_ATTRIBUTES"]) & hd.DISCHARGE_SIGNATURES)
    if leaky:
        log.warning("static attributes %s derive from observed discharge", ", ".join(leaky))
    return ProcessJob(config, data_dir, source, basins)


def run(job: ProcessJob, workers: int, overwrite: bool):
    """Write (or reuse) every basin's arrays, then check the periods against the data.

    Returns ``(out, records, rebuilt, data)``. On bad data the manifest of an earlier run is
    removed: arrays written before the failure are complete, but the manifest is only ever the
    stamp of a finished run.
    """
    config = job.config
    manifest_path = hd.input_dir_for(config, job.source.root) / MANIFEST
    rebuilt = None
    try:
        out, records, rebuilt = hd.prepare_input_data(
            config, job.source, job.basins, workers=workers, overwrite=overwrite
        )
        data = hd.load_input_data(config, job.data_dir, job.basins)
        check_periods(config, data)
    except UserError:
        if rebuilt is None or rebuilt:
            manifest_path.unlink(missing_ok=True)
        raise
    return out, records, rebuilt, data


def report(job: ProcessJob, out: Path, records: dict, rebuilt: list[str], data) -> None:
    """Write ``attributes.csv`` and ``manifest.json`` (last: the stamp of a finished run)."""
    config, source, basins = job.config, job.source, job.basins
    attributes = list(config["STATIC_ATTRIBUTES"])
    write_csv(out / ATTRIBUTES_CSV, _attribute_frame(data, basins, attributes))
    rebuilt_set = set(rebuilt)
    manifest = {
        "format": hd.INPUT_FORMAT,
        "written": dt.datetime.now().isoformat(timespec="seconds"),
        "data_dir": str(source.root.resolve()),
        "synthetic": source.synthetic,
        "columns": list(hd.input_columns(config)),
        "settings": {
            "DYNAMIC_INPUTS": list(config["DYNAMIC_INPUTS"]),
            "TARGET": config["TARGET"],
            "STATIC_ATTRIBUTES": attributes,
            "periods": {name: [config[k0], config[k1]] for name, (k0, k1) in PERIODS.items()},
            **{key: list(config[key]) for key in BASIN_KEYS},
        },
        "basins": {
            basin: {
                **records[basin],
                "end": str(data.basins[basin].end),
                "gauge_name": data.basins[basin].name,
                "area_km2": data.basins[basin].area,
            }
            for basin in basins
        },
        "attribute_files": {
            group: {"path": str(path.resolve()), "md5": hd._md5(path)}
            for group, path in sorted(source.attributes.items())
        },
        "reused": [b for b in basins if b not in rebuilt_set],
        "rebuilt": [b for b in basins if b in rebuilt_set],
    }
    write_json(out / MANIFEST, manifest)
    _summary(data, records, rebuilt_set, config["TARGET"])
    log.info(
        f"{len(manifest['reused'])} basin(s) reused, {len(manifest['rebuilt'])} rebuilt; "
        f"model input data in {out}"
    )
    if source.synthetic:
        log.warning(
            "the data is SYNTHETIC (toolkit demo), not CAMELS-GB: results say nothing "
            "about real catchments"
        )


def main(argv: Sequence[str] | None = None) -> Path:
    """Check the data, write (or reuse) the model input data and its manifest.

    Returns
    -------
    Path
        The model input data folder (the demo data folder with ``--make_demo``).

    Raises
    ------
    UserError
        Any problem with the configuration or the data; nothing is half-written.
    """
    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_config(args.config, stage="data_process", overrides=args.set)
    if args.make_demo:
        if args.demo or args.data_dir:
            raise UserError("--make_demo only writes demo data; drop --demo/--data_dir")
        return _make_demo(args)
    if args.demo_dir:
        raise UserError("--demo_dir goes with --make_demo; use --demo to process the demo data")
    job = prepare(config, args.data_dir, args.basins, args.demo)
    out, records, rebuilt, data = run(job, args.workers, args.overwrite)
    report(job, out, records, rebuilt, data)
    return out


if __name__ == "__main__":
    run_cli(main)
