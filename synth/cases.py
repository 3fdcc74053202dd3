"""Files in, files out: one synthetic case (``meddiff synth lesion``) and a data set of them from a recipe
(``meddiff synth cases``), written in nnU-Net raw layout so that ``meddiff seg train --synthetic`` and
nnU-Net read it directly. A data set resumes: cases whose metadata exist are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from meddiffusion.config import from_dict, load_yaml, resolve_data_path
from meddiffusion.data.layouts import CaseFiles, read_dataset
from meddiffusion.errors import MeddiffError
from meddiffusion.io import check_output, load_subject, save_nifti, write_json
from meddiffusion.paths import sidecar, strip_suffix
from meddiffusion.provenance import file_sha256, provenance
from meddiffusion.synth.masks import PlacementError
from meddiffusion.synth.pipeline import LesionRequest, LesionSynthesizer, SynthesisResult

LABELS = {"background": 0, "necrotic_core": 1, "oedema": 2, "enhancing": 4}


def modality_outputs(out_image: str | Path, modalities: list[str]) -> dict[str, Path]:
    """Where each painted modality is written: one modality -> exactly ``out_image``; several ->
    ``out.nii.gz`` -> ``out_flair.nii.gz``, ``out_t1ce.nii.gz`` ... (one file per modality)."""
    if len(modalities) == 1:
        return {modalities[0]: Path(out_image)}
    stem = strip_suffix(out_image)
    suffix = str(out_image)[len(str(stem)) :] or ".nii.gz"
    return {m: stem.with_name(f"{stem.name}_{m}{suffix}") for m in modalities}


def synthesize_case(
    case: CaseFiles,
    out_image: str | Path,
    out_label: str | Path,
    request: LesionRequest,
    weights: str | Path | None = None,
    force: bool = False,
    avoid: np.ndarray | None = None,
) -> SynthesisResult:
    """Add a lesion to one case, off its tumour and off ``avoid``; writes one image per painted modality (named
    by ``modality_outputs``, each with its JSON record), the label map and ``<label>.json``."""
    synthesizer = LesionSynthesizer.from_pretrained(weights)
    given = synthesizer.check_modalities(list(case.images))
    images = modality_outputs(out_image, given)
    records = {m: sidecar(path) for m, path in images.items()}
    label_record = sidecar(out_label)
    for path in [*images.values(), *records.values(), Path(out_label), label_record]:
        check_output(path, force)
    subject = load_subject({m: case.images[m] for m in given}, case.label, case_id=case.case_id)
    result = synthesizer.synthesize(subject, request, case.convention, progress=True, avoid=avoid)
    affine = subject[given[0]].affine
    metadata = _metadata(case, result)
    for m, path in images.items():
        save_nifti(result.images[m], affine, path, force=force)
        write_json(
            {**metadata, "output": str(path), "modality": m, "label_map": str(out_label)}, records[m], force=force
        )
    save_nifti(result.label, affine, out_label, force=force, label=True)
    write_json(metadata, label_record, force=force)
    return result


def _metadata(case: CaseFiles, result: SynthesisResult) -> dict:
    painted = result.info["modalities_painted"]
    return provenance(
        source_case=case.case_id,
        source_images={m: str(case.images[m]) for m in painted},
        source_sha256={m: file_sha256(case.images[m]) for m in painted},
        **result.info,
    )


@dataclass
class Distribution:
    """Either ``values`` (with optional ``weights``) or a log-uniform range ``[min, max]``."""

    values: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    loguniform: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if bool(self.values) == bool(self.loguniform):
            raise ValueError("give either values or loguniform: [min, max]")
        if self.loguniform and (len(self.loguniform) != 2 or not 0 < self.loguniform[0] < self.loguniform[1]):
            raise ValueError("loguniform needs [min, max] with 0 < min < max")
        if self.weights and len(self.weights) != len(self.values):
            raise ValueError("weights must match values")

    def draw(self, rng: np.random.Generator) -> float:
        if self.values:
            p = np.asarray(self.weights, float) / np.sum(self.weights) if self.weights else None
            return float(rng.choice(self.values, p=p))
        lo, hi = np.log(self.loguniform)
        return float(np.exp(rng.uniform(lo, hi)))


@dataclass
class Recipe:
    """What a synthetic data set looks like: sources, lesion sizes (mL), foci, and how it is sampled."""

    source: str = ""
    layout: str | None = None
    exclude_cases: list[str] = field(default_factory=list)
    volume_ml: Distribution = field(default_factory=lambda: Distribution(loguniform=[0.5, 20.0]))
    foci: Distribution = field(default_factory=lambda: Distribution(values=[1, 2, 3], weights=[0.6, 0.3, 0.1]))
    weights: str | None = None
    steps: int = 10
    seed: int = 0


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    path = Path(path)
    raw = {**load_yaml(path), **(overrides or {})}
    recipe = from_dict(Recipe, raw, path)
    base = path.resolve().parent
    if not recipe.source:
        raise MeddiffError("the recipe names no source data set (source: ...)", path)
    recipe.source = str(resolve_data_path(recipe.source, base))
    if recipe.weights:
        recipe.weights = str(resolve_data_path(recipe.weights, base))
    return recipe


def generate_cases(recipe: Recipe, n: int, out: str | Path, prefix: str = "synth") -> list[dict]:
    """Write ``n`` cases into ``out`` (nnU-Net raw: ``dataset.json``, ``imagesTr/``, ``labelsTr/``,
    ``metadata/CASE.json``); cases already written are skipped, so an interrupted run continues. Every case has
    every channel (nnU-Net needs them): sources lacking one of the generator's modalities are not used."""
    out = Path(out)
    synthesizer = LesionSynthesizer.from_pretrained(recipe.weights)
    modalities = synthesizer.modalities
    sources = [
        c
        for c in read_dataset(recipe.source, recipe.layout)
        if c.case_id not in recipe.exclude_cases and all(m in c.images for m in modalities)
    ]
    if not sources:
        raise MeddiffError(f"no source cases with {', '.join(modalities)} left after exclusions", recipe.source)
    for sub in ("imagesTr", "labelsTr", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_json(
        {
            "channel_names": {str(i): m for i, m in enumerate(modalities)},
            "labels": LABELS,
            "numTraining": n,
            "file_ending": ".nii.gz",
            "name": "meddiffusion synthetic lesions",
            "label_convention": "brats2021",
        },
        out / "dataset.json",
    )
    records = []
    for i in tqdm(range(n), desc="cases"):
        case_id = f"{prefix}_{i:04d}"
        meta_path = out / "metadata" / f"{case_id}.json"
        if meta_path.exists():  # written last: its presence means the case is complete
            continue
        source, subject, result = _draw_case(recipe, sources, synthesizer, i)
        affine = subject[modalities[0]].affine
        for c, m in enumerate(modalities):
            save_nifti(result.images[m], affine, out / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", force=True)
        save_nifti(result.label, affine, out / "labelsTr" / f"{case_id}.nii.gz", force=True, label=True)
        record = _metadata(source, result)
        write_json({"case_id": case_id, **record}, meta_path)
        records.append(record)
    return records


PLACEMENT_TRIES = 5


def _draw_case(recipe: Recipe, sources: list[CaseFiles], synthesizer: LesionSynthesizer, i: int):
    """Case ``i``: a source, a request and the painted result, a pure function of (recipe seed, i). A request that
    cannot be placed in its source (a size the brain there cannot hold within tolerance) is drawn again."""
    attempt = 0
    while True:
        rng = np.random.default_rng([recipe.seed, i] + ([attempt] if attempt else []))
        source = sources[int(rng.integers(len(sources)))]
        request = LesionRequest(
            volume_ml=recipe.volume_ml.draw(rng),
            foci=int(recipe.foci.draw(rng)),
            seed=int(rng.integers(2**31)),
            steps=recipe.steps,
        )
        subject = load_subject(
            {m: source.images[m] for m in synthesizer.modalities}, source.label, case_id=source.case_id
        )
        try:
            return source, subject, synthesizer.synthesize(subject, request, source.convention)
        except PlacementError:
            attempt += 1
            if attempt == PLACEMENT_TRIES:
                raise
