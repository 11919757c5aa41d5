"""Running the per-case transform over a corpus: discovery, pairing, workers, resumable manifest.

Only the main process writes ``manifest.json`` and ``errors.json`` (atomically, after every case),
so a killed run leaves a valid folder that the next run resumes. Workers each hold one volume at a
time, so memory is bounded by one volume per worker.

Longer than 350 lines: discovery, pairing, workers and the resumable manifest share one run's state; it is
due to be split (inputs, workers, manifest) once the DICOM reader rewrite has settled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from meddiff_cli.errors import BadInputError, InputNotFoundError, MeddiffError, OutputError, UsageError
from meddiff_cli.fsutil import FolderLock, atomic_write_json, output_folder, remove_stale_temps, sha256_file
from meddiff_cli.io import CaseSource, discover_cases, read_case, write_nifti
from meddiff_cli.preprocess.manifest import (
    ERRORS_NAME,
    MANIFEST_NAME,
    load_manifest,
    new_manifest,
    settings_differences,
)
from meddiff_cli.preprocess.transform import PreprocessSettings, harmonise_label, harmonise_volume, orientation_codes
from meddiff_cli.io.limits import check_memory, harmonise_memory
from meddiff_cli.modality import MODALITIES
from meddiff_cli.signals import interruptible_process_pool

PHANTOM_FORMAT = "meddiff-phantom"
LOCK_NAME = ".meddiff-preprocess.lock"
CaseCallback = Callable[[dict[str, Any], int, int], None]


@dataclass
class PreprocessResult:
    """What a run did. ``cases`` has one ``{"case_id", "source", "status", ...}`` per input case."""

    out_dir: Path
    cases: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # inputs set aside (as in the manifest's "notes")

    def count(self, status: str) -> int:
        return sum(1 for case in self.cases if case["status"] == status)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [case for case in self.cases if case["status"] == "failed"]

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out_dir),
            "done": self.count("done"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "cases": sorted(self.cases, key=lambda case: case["case_id"]),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs for one case (small and picklable: paths, not voxels)."""

    case: CaseSource
    label: CaseSource | None
    label_required: bool  # labels were given for this run, so a case without one is an error
    out_dir: Path
    settings: PreprocessSettings


@dataclass
class _Inputs:
    cases: list[CaseSource]
    labels: dict[str, CaseSource | None]  # case_id -> label source; absent key: this case has no label source
    label_names: dict[str, int] | None
    modality: str | None  # from phantom manifests, if any
    notes: list[str] = field(default_factory=list)  # inputs set aside (localizers, non-image DICOM), one line each


def preprocess_cases(
    inputs: list[Path],
    out_dir: Path,
    settings: PreprocessSettings,
    labels_dir: Path | None = None,
    workers: int = 1,
    overwrite: bool = False,
    on_case_done: CaseCallback | None = None,
) -> PreprocessResult:
    """Preprocess every case found under ``inputs`` into ``out_dir`` (see docs/formats.md).

    Failed cases are recorded in ``errors.json`` and in the result; they do not stop the run.
    Raises :class:`InputNotFoundError` when nothing is found, :class:`UsageError` when ``out_dir``
    was made with other settings (unless ``overwrite``) or another run holds it.
    """
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    check_memory(harmonise_memory(settings.size, workers), f"--size {'x'.join(map(str, settings.size))} with "
                 f"{workers} worker(s)", "use a smaller --size / fewer --workers")
    out_dir = Path(out_dir)
    found = _gather_inputs([Path(p) for p in inputs], Path(labels_dir) if labels_dir else None)
    output_folder(out_dir)
    with ExitStack() as held:
        try:  # the lock file is deleted when the run ends, however it ends
            held.enter_context(FolderLock(out_dir / LOCK_NAME, timeout=0))
        except TimeoutError:
            raise UsageError("another `meddiff preprocess` run is writing to this folder", out_dir) from None
        return _run(found, out_dir, settings, workers, overwrite, on_case_done)


def _run(
    found: _Inputs,
    out_dir: Path,
    settings: PreprocessSettings,
    workers: int,
    overwrite: bool,
    on_case_done: CaseCallback | None,
) -> PreprocessResult:
    previous = _previous_manifest(out_dir, overwrite)
    modality = _resolve_modality(settings, found, previous)
    settings = settings.resolved(modality)
    manifest = new_manifest(settings, found.label_names)
    manifest["notes"] = found.notes
    if previous is not None:
        differences = settings_differences(previous, settings)
        if differences and not overwrite:
            raise UsageError(
                f"this folder was preprocessed with other settings ({'; '.join(differences)}); "
                "pass --overwrite to redo every case with the new settings, or choose another --out",
                out_dir,
            )
        if not differences:
            manifest["cases"] = list(previous["cases"])
            manifest["labels"] = found.label_names if found.label_names is not None else previous["labels"]
        else:
            _remove_outputs(out_dir, previous["cases"])
    for folder in (out_dir, out_dir / "images", out_dir / "labels"):
        remove_stale_temps(folder)

    result = PreprocessResult(out_dir, notes=found.notes)
    recorded = {case["case_id"]: case for case in manifest["cases"]}
    jobs: list[_Job] = []
    total = len(found.cases)
    for case in found.cases:
        entry = recorded.get(case.case_id)
        status = _existing_status(entry, case, out_dir, overwrite)
        if status == "skipped":
            _finish(result, {"case_id": case.case_id, "source": str(case.path), "status": "skipped"}, total, on_case_done)
        elif status is not None:
            _finish(result, _failure(case, status), total, on_case_done)
        else:
            jobs.append(_Job(case, found.labels.get(case.case_id), case.case_id in found.labels, out_dir, settings))

    errors: list[dict[str, Any]] = [
        {"source": c["source"], "case_id": c["case_id"], "error": c["error"]} for c in result.failed
    ]

    def record(outcome: dict[str, Any]) -> None:
        if outcome["status"] == "done":
            recorded[outcome["case_id"]] = outcome.pop("entry")
            manifest["cases"] = [recorded[key] for key in sorted(recorded)]
            atomic_write_json(out_dir / MANIFEST_NAME, manifest)
        else:
            stale = recorded.get(outcome["case_id"])
            if stale is not None and not _outputs_intact(stale, out_dir):
                del recorded[outcome["case_id"]]  # its files are gone or damaged: the entry would lie
                manifest["cases"] = [recorded[key] for key in sorted(recorded)]
                atomic_write_json(out_dir / MANIFEST_NAME, manifest)
            errors.append({key: outcome[key] for key in ("source", "case_id", "error")})
            atomic_write_json(out_dir / ERRORS_NAME, errors)
        _finish(result, outcome, total, on_case_done)

    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    if errors:
        atomic_write_json(out_dir / ERRORS_NAME, errors)
    _execute(jobs, workers, record)
    if not errors:
        (out_dir / ERRORS_NAME).unlink(missing_ok=True)
    return result


def _execute(jobs: list[_Job], workers: int, record: Callable[[dict[str, Any]], None]) -> None:
    """Run jobs inline (one worker) or in a process pool; ``record`` is always called in this process."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            record(process_job(job))
        return
    # spawn workers born ignoring Ctrl-C; queued cases are cancelled on any exception (see signals.py).
    with interruptible_process_pool(min(workers, len(jobs))) as pool:
        pending: dict[Future, _Job] = {pool.submit(process_job, job): job for job in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    outcome = _failure(job.case, "worker process died (out of memory?)")
                record(outcome)


def process_job(job: _Job) -> dict[str, Any]:
    """Worker entry point: one case in, its outputs written, its manifest entry (or error) out."""
    try:
        entry = _process_case(job)
    except OutputError:
        raise  # the output folder's problem (disk full, read-only), not this case's: stop; a rerun resumes
    except MeddiffError as error:
        return _failure(job.case, error.message)
    except MemoryError:
        return _failure(job.case, "out of memory")
    except Exception as error:  # a bug for one case must not lose the others; the message says what
        return _failure(job.case, f"internal error {type(error).__name__}: {error}")
    return {"case_id": job.case.case_id, "source": str(job.case.path), "status": "done", "image": entry["image"], "entry": entry}


def _process_case(job: _Job) -> dict[str, Any]:
    settings, case = job.settings, job.case
    volume = read_case(case, "auto", settings.volume_index)  # "auto": keep the file's own modality (mismatch check)
    if volume.modality in MODALITIES and volume.modality != settings.modality:
        raise BadInputError(f"this scan is {volume.modality} but the run preprocesses {settings.modality}")
    volume.modality = settings.modality
    image = harmonise_volume(volume, settings)
    label = None
    if job.label is not None:
        try:
            label = harmonise_label(read_case(job.label, settings.modality), volume, settings)
        except MeddiffError as error:
            raise BadInputError(f"label {job.label.path}: {error.message}") from None
    elif job.label_required:
        raise BadInputError("no label map with this case id in the labels folder")
    # Written only when everything succeeded, so a failed case leaves no half-made pair behind.
    image_rel = f"images/{case.case_id}.nii.gz"
    write_nifti(image, job.out_dir / image_rel, dtype="float32")
    entry: dict[str, Any] = {
        "case_id": case.case_id,
        "source": str(case.path),
        "format": case.format,
        "original_shape": list(volume.shape),
        "original_spacing": [round(s, 6) for s in volume.spacing],
        "original_orientation": orientation_codes(volume.affine),
        "image": image_rel,
        "label": None,
        "intensity": image.metadata["intensity"],
        "sha256": sha256_file(job.out_dir / image_rel),
        "label_sha256": None,
    }
    if "selected_volume" in volume.metadata:  # one volume of a 4D series: which one
        entry["selected_volume"] = volume.metadata["selected_volume"]
    if "mosaic" in volume.metadata:
        entry["mosaic"] = volume.metadata["mosaic"]
    if label is not None:
        label_rel = f"labels/{case.case_id}.nii.gz"
        write_nifti(label, job.out_dir / label_rel, dtype="uint8")
        entry["label"] = label_rel
        entry["label_sha256"] = sha256_file(job.out_dir / label_rel)
        entry["label_values"] = [int(v) for v in np.unique(label.array)]
    return entry


# ------------------------------------------------------------------------------------------- bookkeeping


def _failure(case: CaseSource, message: str) -> dict[str, Any]:
    return {"case_id": case.case_id, "source": str(case.path), "status": "failed", "error": " ".join(message.split())}


def _finish(result: PreprocessResult, outcome: dict[str, Any], total: int, callback: CaseCallback | None) -> None:
    result.cases.append(outcome)
    if callback is not None:
        callback(outcome, len(result.cases), total)


def _existing_status(entry: dict[str, Any] | None, case: CaseSource, out_dir: Path, overwrite: bool) -> str | None:
    """``"skipped"`` when finished outputs are intact, an error message on an id clash, else ``None`` (redo)."""
    if entry is None or overwrite:
        return None
    if not _same_source(entry["source"], case.path):
        return f"case id already holds {entry['source']} in this folder; pass --overwrite or choose another --out"
    return "skipped" if _outputs_intact(entry, out_dir) else None


def _outputs_intact(entry: dict[str, Any], out_dir: Path) -> bool:
    """The recorded image (and label) exist with the recorded SHA-256."""
    outputs = [(entry["image"], entry["sha256"])]
    if entry["label"] is not None:
        outputs.append((entry["label"], entry["label_sha256"]))
    return all((out_dir / rel).is_file() and sha256_file(out_dir / rel) == digest for rel, digest in outputs)


def _same_source(recorded: str, path: Path) -> bool:
    """The recorded source is this input, however it was spelled (relative, absolute, via a link)."""
    if recorded == str(path):
        return True
    try:
        return Path(recorded).exists() and Path(recorded).resolve() == Path(path).resolve()
    except OSError:
        return False


def _previous_manifest(out_dir: Path, overwrite: bool) -> dict[str, Any] | None:
    if not (out_dir / MANIFEST_NAME).exists():
        return None
    try:
        return load_manifest(out_dir)
    except BadInputError as error:
        if overwrite:
            return None
        raise UsageError(f"{error.message}; pass --overwrite to start this folder afresh", out_dir / MANIFEST_NAME) from None


def _remove_outputs(out_dir: Path, cases: list[dict[str, Any]]) -> None:
    """Delete outputs made with superseded settings so the folder never mixes two grids.

    Only what the manifest lists under images/ or labels/: a damaged manifest cannot point outside them.
    """
    for case in cases:
        for key in ("image", "label"):
            path = out_dir / str(case.get(key) or "")
            if case.get(key) and path.parent.resolve() == (out_dir / f"{key}s").resolve():
                path.unlink(missing_ok=True)


def _resolve_modality(settings: PreprocessSettings, found: _Inputs, previous: dict[str, Any] | None) -> str:
    """``--modality`` if given, else the phantom manifest's, the existing output's, or the first scan's."""
    if settings.modality != "auto":
        return settings.modality
    if found.modality:
        return found.modality
    if previous is not None:
        return previous["modality"]
    # Only DICOM carries a modality; each DICOM case is checked against it again in its worker, where
    # a case that cannot be read here fails with its own message.
    first = "unknown"
    for case in (case for case in found.cases if case.format == "dicom"):
        try:
            first = read_case(case, "auto", settings.volume_index).modality
            break
        except MeddiffError:
            continue
    if first not in MODALITIES:
        raise UsageError(
            "cannot tell whether the input is CT or MRI (only DICOM headers and phantom manifests say): "
            "pass --modality ct or --modality mri"
        )
    return first


# -------------------------------------------------------------------------------------------- discovery


def _gather_inputs(inputs: list[Path], labels_dir: Path | None) -> _Inputs:
    """Expand phantom folders (via their manifest), discover the other inputs, pair label maps with cases."""
    if not inputs:
        raise InputNotFoundError("no INPUT given")
    for path in inputs:
        if not path.exists():
            raise InputNotFoundError("no such file or folder", path)
    if labels_dir is not None and not labels_dir.is_dir():
        raise InputNotFoundError("labels folder not found", labels_dir)

    cases: list[CaseSource] = []
    notes: list[str] = []
    labels: dict[str, CaseSource | None] = {}
    names: dict[str, int] | None = None
    modalities: set[str] = set()
    scan_inputs: list[Path] = []
    for path in inputs:
        phantom = _phantom_manifest(path)
        if phantom is None:
            scan_inputs.append(path)
            continue
        for case, label in _phantom_cases(path, phantom):
            cases.append(case)
            labels[case.case_id] = label
        if phantom.get("modality") in MODALITIES:
            modalities.add(phantom["modality"])
        if isinstance(phantom.get("labels"), dict):
            names = {**(names or {}), **_label_names(phantom["labels"])}
    if len(modalities) > 1:
        raise UsageError(f"phantom inputs mix modalities {sorted(modalities)}: preprocess them separately")
    if scan_inputs:
        cases.extend(discover_cases(scan_inputs, notes))
    if not cases:
        raise InputNotFoundError(f"no volumes found in {', '.join(str(p) for p in inputs)}")
    by_case_id: dict[str, CaseSource] = {}
    for case in cases:
        if case.case_id in by_case_id:
            raise BadInputError(
                f"two inputs give the same case id {case.case_id!r}: {by_case_id[case.case_id].path} and {case.path}"
            )
        by_case_id[case.case_id] = case

    if labels_dir is not None:
        by_id = {label.case_id: label for label in discover_cases([labels_dir])}
        names = names or _dataset_json_names(labels_dir)
        labels = {
            case.case_id: by_id.get(case.case_id) or by_id.get(_strip_channel(case.case_id)) for case in cases
        }
    return _Inputs(sorted(cases, key=lambda c: c.case_id), labels, names, modalities.pop() if modalities else None, notes)


def _phantom_cases(folder: Path, manifest: dict[str, Any]) -> list[tuple[CaseSource, CaseSource | None]]:
    """The cases a ``meddiff phantom`` manifest lists, under its case ids (also for DICOM series folders)."""
    entries = manifest.get("cases")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "case_id" in e and "image" in e for e in entries):
        raise BadInputError("phantom manifest has no valid cases list", folder / MANIFEST_NAME)
    pairs = []
    for entry in entries:
        case_id, image = str(entry["case_id"]), folder / entry["image"]
        found = discover_cases([image]) if image.exists() else []
        # A missing image stays a case, so that its failure is reported (read_case names the missing path).
        case = replace(found[0], case_id=case_id) if len(found) == 1 else CaseSource(case_id, image, "missing")
        label = None
        if entry.get("label") and (folder / entry["label"]).is_file():
            label = discover_cases([folder / entry["label"]])[0]
        pairs.append((case, label))
    return pairs


def _phantom_manifest(path: Path) -> dict[str, Any] | None:
    manifest = path / MANIFEST_NAME
    if not (path.is_dir() and manifest.is_file()):
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == PHANTOM_FORMAT else None


def _label_names(raw: dict[str, Any]) -> dict[str, int]:
    """Accept ``{name: value}`` or ``{value: name}`` and return ``{name: value}`` sorted by value."""
    pairs = []
    for key, value in raw.items():
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit() and not key.isdigit()):
            pairs.append((str(key), int(value)))
        else:
            pairs.append((str(value), int(key)))
    return dict(sorted(pairs, key=lambda pair: pair[1]))


def _dataset_json_names(labels_dir: Path) -> dict[str, int] | None:
    """Label names from an nnU-Net ``dataset.json`` beside or inside the labels folder, if any."""
    for candidate in (labels_dir / "dataset.json", labels_dir.parent / "dataset.json"):
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
            return _label_names(data["labels"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


def _strip_channel(case_id: str) -> str:
    """nnU-Net names images ``<case>_0000``: pair them with ``<case>`` label maps."""
    return case_id[:-5] if case_id.endswith("_0000") else case_id
