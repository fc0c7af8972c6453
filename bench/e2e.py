"""End-to-end latency: from the last instance stored in Orthanc to the last result stored back in Orthanc.

A 155-slice 256x256 MR phantom is stored into a real Orthanc (Debian package) by dcmtk's storescu;
Orthanc's Lua script (orthanc/autoroute.lua) forwards the stable study to the node; the node segments it
and sends the SEG, the SR and the overlays back by C-STORE. The time is split into: stable wait (Orthanc's
StableAge, its forwarding, the node's own stable time), queue (job created -> started), the pipeline's
steps (load, inference, explanation, writing) and sending (pipeline end -> every result acknowledged).

With ``--study`` the input is a four-sequence phantom study instead (T1c axial 155 slices, T1 sagittal, T2 and
FLAIR; neuronova.phantoms.study) and the job timed is the study pipeline's (mri_tumour_study).

Usage: .venv/bin/python bench/e2e.py [--slices 155] [--orthanc-stable-age 2] [--node-stable-seconds 2] [--study]
Not a test: it prints a table (and appends nothing anywhere); the numbers go on the issue and bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neuronova.phantoms.dicom import make_mr_study, write_series  # noqa: E402
from tests.conftest import REPO, NodeProcess, OrthancProcess, get_port, storescu  # noqa: E402

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


def _ts(value: str | None) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=155)
    p.add_argument("--matrix", type=int, default=256)
    p.add_argument("--orthanc-stable-age", type=int, default=2)
    p.add_argument("--node-stable-seconds", type=float, default=2.0)
    p.add_argument("--model-dir", help="model directory (default: the shipped demo models)")
    p.add_argument("--study", action="store_true", help="a four-sequence study through mri_tumour_study")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "node" / "data"
        data.mkdir(parents=True)
        import secrets

        node = NodeProcess(data_dir=data, http_port=get_port(), dimse_port=get_port(), secret=secrets.token_hex(32))
        orthanc = OrthancProcess(root=root / "orthanc", http_port=get_port(), dicom_port=get_port())
        orthanc.modalities = {"neuronova": ["NEURONOVA", "127.0.0.1", node.dimse_port]}
        orthanc.lua_scripts = [str(REPO / "orthanc" / "autoroute.lua")]
        node.extra_args = ["--stable-seconds", str(args.node_stable_seconds),
                           "--destination", f"dimse://ORTHANC@127.0.0.1:{orthanc.dicom_port}"]
        if args.model_dir:
            node.extra_args += ["--model-dir", args.model_dir]
        pipeline = "mri_segmentation"
        if args.study:
            from neuronova.phantoms.study import make_study

            pipeline = "mri_tumour_study"
            four = make_study(2026, n_tumours=2)
            files = [f for role, s in four.series.items() for f in write_series(s.datasets, root / role)]
            study_uid = four.study_instance_uid
        else:
            study = make_mr_study(2026, shape=(args.slices, args.matrix, args.matrix), n_tumours=2)
            files = write_series(study.datasets, root / "mr")
            study_uid = study.datasets[0].StudyInstanceUID
        cfg_age = args.orthanc_stable_age
        orthanc_config = orthanc.config
        orthanc.config = lambda: {**orthanc_config(), "StableAge": cfg_age}  # type: ignore[method-assign]
        orthanc.start()
        node.start(timeout=300)  # model loading and warm-up take a minute on a loaded 2-core machine
        try:
            t_send = time.time()
            proc = storescu(orthanc.dicom_port, files, aec="ORTHANC")
            assert proc.returncode == 0, proc.stderr
            t_stored = time.time()
            job = None
            while time.time() - t_stored < 600:
                r = httpx.get(f"{node.url}/api/v1/studies/{study_uid}", headers=node.headers, timeout=10)
                jobs = r.json().get("jobs", []) if r.status_code == 200 else []
                job = next((j for j in jobs if j["pipeline"] == pipeline), None)
                if job and job["state"] in ("done", "failed"):
                    break
                time.sleep(0.05)
            assert job and job["state"] == "done", job
            t_seen_done = time.time()
            results = {r["sop_instance_uid"] for r in job["results"]}
            # the last result as Orthanc saw it: its ReceptionDate per instance (second resolution), and our poll
            got = set()
            while results - got and time.time() - t_seen_done < 60:
                for uid in results - got:
                    if httpx.post(f"{orthanc.url}/tools/lookup", content=uid).json():
                        got.add(uid)
                time.sleep(0.05)
            t_in_orthanc = time.time()
        finally:
            node.stop()
            orthanc.stop()

    created, started, finished = _ts(job["created_at"]), _ts(job["started_at"]), _ts(job["finished_at"])
    timings = job["summary"]["timings"]
    print("inputs:", job["summary"].get("inputs", "one series"))
    pipeline_s = sum(timings.values())
    rows = [
        ("storescu into Orthanc", t_stored - t_send),
        ("stable wait (Orthanc StableAge + forward + node stable)", created - t_stored),
        ("queue (job created -> started)", started - created),
        *[(f"pipeline: {k.removesuffix('_s')}", v) for k, v in timings.items()],
        ("storing results + sending + acknowledgement", finished - started - pipeline_s),
        ("total: last instance in Orthanc -> last result acknowledged", finished - t_stored),
        ("after the study was stable (job created -> done)", finished - created),
    ]
    what = "four-sequence study (T1c 155 slices)" if args.study else f"{args.slices}-slice {args.matrix}x{args.matrix} MR"
    print(f"\n{what}, Orthanc StableAge {cfg_age} s, node stable "
          f"{args.node_stable_seconds} s, {len(results)} result instances (all seen in Orthanc: "
          f"{t_in_orthanc - t_stored:.2f} s after the last input)\n")
    print("| step | seconds |\n| --- | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print(f"\ntarget: under 15 s after the study is stable -> {finished - created:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
