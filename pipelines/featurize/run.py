"""The featurize stage end to end: plan (every check before Ray), encode the pending shards, then write each
dataset's manifest last. Idempotent and resumable (see :mod:`pipelines.featurize.encode`)."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os

from dept.weights import is_local_checkpoint
from pipelines.featurize.encode import encode
from pipelines.featurize.plan import (
    DatasetPlan,
    DatasetResult,
    FeaturizeConfig,
    FeaturizeResult,
    load_splits,
    plan_dataset,
)
from pipelines.paths import check_writable_folder
from pipelines.store import FEWSHOT, MANIFEST, SPLITS, Manifest, load_manifest, model_store_url

log = logging.getLogger(__name__)


def _finalize(plan: DatasetPlan, cfg: FeaturizeConfig) -> Manifest:
    store = plan.store
    present = set(store.shard_names())
    missing = [s.name for s in plan.shards if s.name not in present]
    if missing:
        raise RuntimeError(f"{store.url}: shards missing after encoding: {missing[:3]}")
    rows = {s: 0 for s in SPLITS}
    skipped: list[dict] = []
    shards: dict[str, dict] = {}
    expected = {s: 0 for s in SPLITS}
    for s in plan.shards:
        n, meta = store.shard_meta(s.name)
        rows[s.split] += n
        sk = meta.get("skipped", [])
        skipped.extend(sk)
        # size and sha256 as written (this run) or as verified by the plan (earlier runs): a rerun checks them
        shards[s.name] = {"rows": n, "node_ids": meta.get("node_ids", []), "skipped": len(sk),
                          **store.shard_record(s.name)}
        n_views = 1 + cfg.views if s.split == "train" else 1
        expected[s.split] += s.rows - len(sk) * n_views
    if rows != expected:
        raise RuntimeError(f"{store.url}: row counts {rows} differ from the plan {expected}")
    manifest = dataclasses.replace(
        plan.header,
        rows=rows,
        skipped=tuple(sorted(skipped, key=lambda d: (d["split"], d["image_id"]))),
        shards=shards,
        on_error=cfg.on_error,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        complete=True,
    )
    manifest = dataclasses.replace(manifest, fingerprint=manifest.content_fingerprint())
    store.write_json(MANIFEST, manifest.to_dict())
    store.remove_stale_temporaries()
    return manifest


def featurize(cfg: FeaturizeConfig) -> FeaturizeResult:
    """Featurize the datasets of ``cfg`` into ``cfg.out``; idempotent and resumable (see :mod:`pipelines.featurize.encode`)."""
    cfg.validate()
    pretrained = cfg.pretrained
    if is_local_checkpoint(pretrained):
        # Ray workers do not share the driver's working directory: pass them an absolute path.
        pretrained = os.path.abspath(os.path.expanduser(str(pretrained)))
    splits_list = load_splits(cfg)  # DatasetError (one line) for unknown names, missing roots/files/images
    from dept.clip import load_clip  # here: torch loads once the datasets are found (their errors answer at once)

    # The driver needs the model's identity, feature size and transform settings; the image tower is not kept.
    clip = load_clip(cfg.model, pretrained, text_only=True)
    model_url = model_store_url(cfg.out, clip.model_name, clip.weights_id)
    plans = [plan_dataset(cfg, i, s, clip, model_url) for i, s in enumerate(splits_list)]
    for p in plans:
        if not p.complete:  # what is written lies below --out: a read-only folder there is one line, before Ray
            check_writable_folder(p.store.url, "--out")

    with contextlib.ExitStack() as locks:
        for p in plans:
            if not p.complete:
                locks.enter_context(p.store.writer_lock())  # StoreError (one line) if another run writes there
        return _write_plans(cfg, plans, clip, model_url)


def _write_plans(cfg: FeaturizeConfig, plans: list[DatasetPlan], clip, model_url: str) -> FeaturizeResult:
    for p in plans:
        if not p.complete:
            # The manifest goes first, marked incomplete: a rerun with other settings is refused before it
            # writes anything, and no reader takes the folder for a finished store.
            if not p.store.exists(MANIFEST) or load_manifest(p.store, require_complete=False).complete:
                p.store.write_json(MANIFEST, p.header.to_dict())
            p.store.write_json(FEWSHOT, p.fewshot)
            for name in p.damaged:  # after the manifest says incomplete: no reader takes the folder meanwhile
                p.store.remove(name)

    todo = [p for p in plans if p.pending]
    for p in plans:
        if p.complete:
            log.info("%s: already complete at %s", p.name, p.store.url)
        elif p.pending:
            log.info("%s: %d of %d shards to encode (%d rows)", p.name, len(p.pending), len(p.shards),
                     sum(s.rows for s in p.pending))
    encoded = encode(cfg, plans, clip) if todo else {}
    encoded_by_name = {plans[i].name: n for i, n in encoded.items()}

    results = []
    for p in plans:
        manifest = load_manifest(p.store) if p.complete else _finalize(p, cfg)
        results.append(DatasetResult(
            name=p.name, url=p.store.url, encoded=encoded_by_name.get(p.name, 0),
            shards_skipped=len(p.shards) - len(p.pending), rows=dict(manifest.rows),
            skipped_images=len(manifest.skipped), fingerprint=manifest.fingerprint,
        ))
    return FeaturizeResult(model_url=model_url, identity=clip.identity, datasets=results)
