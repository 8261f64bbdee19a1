"""Contrastive CLIP training (library API): ``train_clip(settings, data_source) -> result dict``.

One process, CPU-friendly: timm's AdamW factory (no decay on bias/norm/logit scale) and cosine-with-warmup scheduler
stepped per update, gradient clipping, logit-scale clamp at ln 100, validation by zero-shot accuracy/AUC from prompt
prototypes (labelled data) and retrieval R@k, a run dir with config.yaml / metrics.csv / results.json /
checkpoints/{last,best}.pt (atomic), resume from last.pt, and ``export/`` in the ``checkpoint`` backend's format.

Determinism: the order, the prompt drawn for each sample and the flips and shifts of epoch e come from a generator
seeded with (seed, e), and the torch RNG state is checkpointed, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaiclip_cli.data.base import DataSource
from xaiclip_cli.errors import UsageError, XaiclipError
from xaiclip_cli.models.base import resolve_device
from xaiclip_cli.models.checkpoint import export_meta, save_export
from xaiclip_cli.models.clip_model import ClipModel
from xaiclip_cli.models.text_tower import build_tokenizer, load_tokenizer, tokenize
from xaiclip_cli.train.clip_data import (
    ClipData,
    PromptSet,
    labelled_data,
    normalise_batch,
    open_labelled_source,
    pairs_data,
    read_prompt_set,
    shift_batch,
)
from xaiclip_cli.train.clip_loss import clip_loss

log = logging.getLogger("xaiclip.train.clip")

ProgressFactory = Callable[[int | None, str, str], contextlib.AbstractContextManager[Callable[[int], None]]]
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "logit_scale", "val_loss", "val_zs_acc", "val_zs_auc", "val_i2t_r1",
                  "val_t2i_r1", "val_i2t_r5", "val_t2i_r5", "val_mean_r1", "seconds"]


# --- small helpers --------------------------------------------------------------------------------------------------
def _atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp name, then os.replace (a crash never leaves a half-written checkpoint)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _settings_yaml(settings: Any) -> str:
    import yaml

    if hasattr(settings, "model_dump"):
        data = settings.model_dump(mode="json")
    else:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items() if not k.startswith("_")}
    return yaml.safe_dump({"train": data}, sort_keys=False, allow_unicode=True)


def _get(settings: Any, name: str, default: Any = None) -> Any:
    return getattr(settings, name, default)


@contextlib.contextmanager
def _no_progress(total: int | None, desc: str, unit: str = "items") -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


# --- model spec -----------------------------------------------------------------------------------------------------
def model_spec(settings: Any, tokenizer: Any) -> dict[str, Any]:
    """The ClipModel spec (image tower, text tower, embed_dim, scalars) from settings and the tokenizer."""
    image = {"name": settings.image_model, "kwargs": dict(_get(settings, "image_kwargs") or {}),
             "in_chans": int(settings.in_chans), "image_size": int(settings.image_size),
             "pretrained": bool(_get(settings, "pretrained", False))}
    if _get(settings, "pretrained_path"):
        image["pretrained_path"] = str(settings.pretrained_path)
    if (_get(settings, "image_pool", "head") or "head") != "head":
        image["pool"] = str(settings.image_pool)
        if _get(settings, "image_pool_heads"):
            image["pool_heads"] = int(settings.image_pool_heads)
        if (_get(settings, "image_pool_query", "mean") or "mean") != "mean":
            image["pool_query"] = str(settings.image_pool_query)
    text_model = _get(settings, "text_model")
    if text_model:
        text: dict[str, Any] = {"pretrained": str(text_model)}
    else:
        cfg = {"model_type": "bert", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 1024}
        cfg.update(dict(_get(settings, "text_config") or {}))
        cfg["vocab_size"] = len(tokenizer)
        cfg["pad_token_id"] = int(tokenizer.pad_token_id or 0)
        cfg["max_position_embeddings"] = max(int(cfg.get("max_position_embeddings", 0)), int(settings.context_length))
        text = {"config": cfg}
    text["pooling"] = _get(settings, "text_pooling", "cls")
    spec: dict[str, Any] = {"image_tower": image, "text_tower": text, "embed_dim": int(settings.embed_dim)}
    if _get(settings, "logit_bias") is not None:
        spec["logit_bias_init"] = float(settings.logit_bias)
    return spec


def _load_state(path: Path) -> dict[str, Any]:
    """A training checkpoint (tensors and plain Python only); a damaged file is one line naming it (exit 1)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals and truncated zips alike
        reason = " ".join(str(exc).split())[:120]
        raise XaiclipError(f"checkpoint {path}: cannot be read ({type(exc).__name__}: {reason}); the file is "
                           "damaged: delete it (and --resume) to start over") from None


# --- evaluation -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_split_images(model: ClipModel, images: torch.Tensor, settings: Any, device: torch.device,
                        batch_size: int = 256) -> torch.Tensor:
    """Normalised global image features [N,D] of a uint8 split."""
    out = []
    for lo in range(0, images.shape[0], batch_size):
        px = normalise_batch(images[lo:lo + batch_size], settings.image_size, list(settings.mean), list(settings.std))
        out.append(model.encode_image(px.to(device))[0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


@torch.no_grad()
def encode_texts(model: ClipModel, tokenizer: Any, texts: list[str], context_length: int, device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    """Normalised global text features [K,D]."""
    out = []
    for lo in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, texts[lo:lo + batch_size], context_length)
        out.append(model.encode_text(ids.to(device), mask.to(device))[0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


@torch.no_grad()
def class_prototypes(model: ClipModel, tokenizer: Any, class_prompts: list[list[str]], context_length: int,
                     device: torch.device) -> torch.Tensor:
    """Per-class prototypes [K,D]: mean of the normalised prompt embeddings, re-normalised (CLIP prompt ensembling)."""
    protos = []
    for prompts in class_prompts:
        emb = encode_texts(model, tokenizer, prompts, context_length, device)
        protos.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(protos)


def zero_shot_metrics(image_features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                      scale: float = 100.0) -> dict[str, float]:
    """Zero-shot accuracy and one-vs-rest AUC (sklearn) of softmax(scale · image @ prototypesᵀ)."""
    from sklearn.metrics import roc_auc_score

    logits = scale * image_features @ prototypes.t()
    prob = logits.softmax(-1).numpy()
    y = labels.numpy()
    acc = float((prob.argmax(1) == y).mean()) if len(y) else float("nan")
    present = np.unique(y)
    auc = float("nan")
    try:
        if prototypes.shape[0] == 2 and len(present) == 2:
            auc = float(roc_auc_score(y, prob[:, 1]))
        elif len(present) == prototypes.shape[0] and len(present) > 2:
            auc = float(roc_auc_score(y, prob, multi_class="ovr", labels=list(range(prototypes.shape[0]))))
    except ValueError:
        pass
    return {"zs_acc": acc, "zs_auc": auc}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor,
                      groups: torch.Tensor | None = None, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways for paired rows i↔i; with ``groups`` a hit is any item of the same group (class)."""
    sim = image_features @ text_features.t()
    n = sim.shape[0]
    out: dict[str, float] = {}
    ids = torch.arange(n) if groups is None else groups
    for name, s in (("i2t", sim), ("t2i", sim.t())):
        order = s.argsort(dim=1, descending=True)
        hit = ids[order] == ids[:, None]
        for k in ks:
            out[f"{name}_r{k}"] = float(hit[:, :k].any(dim=1).float().mean()) if n else float("nan")
    out["mean_r1"] = 0.5 * (out["i2t_r1"] + out["t2i_r1"])
    return out


def evaluate(model: ClipModel, tokenizer: Any, data: ClipData, split: str, settings: Any,
             device: torch.device) -> dict[str, float]:
    """Zero-shot (labelled data), retrieval R@k and the contrastive loss on one split (fixed prompts)."""
    model.eval()
    sp = data.splits[split]
    img = encode_split_images(model, sp.images, settings, device)
    if data.labelled:
        assert sp.labels is not None
        # Fixed, deterministic prompt per sample (rotating through the class's prompts) for retrieval and loss.
        texts = [data.class_prompts[int(y)][i % len(data.class_prompts[int(y)])] for i, y in enumerate(sp.labels)]
    else:
        texts = list(sp.captions or [])
    txt = encode_texts(model, tokenizer, texts, settings.context_length, device)
    out: dict[str, float] = {}
    if data.labelled:
        protos = class_prototypes(model, tokenizer, data.class_prompts, settings.context_length, device)
        out.update(zero_shot_metrics(img, protos, sp.labels, scale=float(model.scale().detach().cpu())))
        out.update(retrieval_metrics(img, txt, groups=sp.labels))
    else:
        out.update(retrieval_metrics(img, txt))
    scale = model.scale().detach().float().cpu()
    bias = None if model.logit_bias is None else model.logit_bias.detach().float().cpu()
    bs = int(settings.batch_size)
    losses = []
    for lo in range(0, len(texts), bs):
        hi = min(lo + bs, len(texts))
        if hi - lo < 2:
            continue
        lab = sp.labels[lo:hi] if (data.labelled and settings.label_aware) else None
        losses.append(float(clip_loss(img[lo:hi], txt[lo:hi], scale, bias, lab)))
    out["loss"] = float(np.mean(losses)) if losses else float("nan")
    return out


# --- training -------------------------------------------------------------------------------------------------------
def prepare_data(settings: Any, data_source: DataSource | None) -> ClipData:
    """ClipData from a given source, a pairs CSV, or ``settings.data``."""
    prompt_set = None
    if _get(settings, "prompts"):
        from xaiclip_cli.resources import config_path

        p = Path(settings.prompts)
        # A bare name (toycells.yaml) also finds the shipped prompt sets in configs/.
        prompt_set = read_prompt_set(p if p.exists() else config_path(p.name))
    common = {"image_size": int(settings.image_size), "in_chans": int(settings.in_chans),
              "max_train": _get(settings, "max_train_samples"), "max_eval": _get(settings, "max_eval_samples"),
              "seed": int(settings.seed)}
    if data_source is None and _get(settings, "pairs"):
        return pairs_data(Path(settings.pairs), path_key=_get(settings, "path_key", "path"),
                          caption_key=_get(settings, "caption_key", "caption"), **common)
    src = data_source or open_labelled_source(settings.data, _get(settings, "data_root"))
    if src.info().kind == "toycells" and not (prompt_set and prompt_set.captions):
        # Toy cells come with class descriptions (nucleus shape, granules): training on them teaches concepts.
        from xaiclip_cli.data.toycells import TOYCELLS_CAPTIONS

        prompt_set = prompt_set or PromptSet()
        prompt_set.captions = {k: list(v) for k, v in TOYCELLS_CAPTIONS.items()}
    return labelled_data(src, label_names=list(_get(settings, "label_names") or []),
                         templates=list(_get(settings, "templates") or []), prompt_set=prompt_set, **common)


def _run_dir(settings: Any) -> Path:
    name = _get(settings, "name")
    if not name:
        if _get(settings, "resume"):
            raise UsageError("--resume needs --name of the run to continue")
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-clip-{settings.image_model}"
    return Path(settings.output_dir) / name


def _build_optimizer(model: ClipModel, settings: Any, steps_per_epoch: int) -> tuple[Any, Any]:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    optimizer = create_optimizer_v2(model, opt="adamw", lr=float(settings.learning_rate),
                                    weight_decay=float(settings.weight_decay))
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=int(settings.epochs), warmup_epochs=int(settings.warmup_epochs),
        warmup_lr=float(settings.learning_rate) * 0.01, min_lr=float(settings.min_lr), warmup_prefix=True,
        step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    return optimizer, scheduler


def _selection(settings: Any, data: ClipData) -> str:
    choice = _get(settings, "select_metric", "auto") or "auto"
    if choice == "auto":
        return "val_zs_auc" if data.labelled else "val_mean_r1"
    if choice in ("val_zs_auc", "val_zs_acc") and not data.labelled:
        raise UsageError(f"--select-metric {choice} needs labelled data (not --pairs)")
    return str(choice)


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = list(METRIC_COLUMNS)
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})
    os.replace(tmp, path)


def _better(value: float, loss: float, best: float | None, best_loss: float | None) -> bool:
    """Strictly higher metric wins; on a tie (AUC/accuracy saturate at 1 on easy data) lower val loss wins."""
    if math.isnan(value):
        return False
    if best is None or value > best:
        return True
    if value == best and best_loss is not None and not math.isnan(loss):
        return loss < best_loss
    return False


def train_clip(
    settings: Any,
    data_source: DataSource | None = None,
    *,
    progress: ProgressFactory | None = None,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) a CLIP per ``settings``; write the run dir and ``export/``; return a result dict.

    ``settings`` is a ClipTrainSettings (or any object with its attributes); ``data_source`` overrides
    ``settings.data``; ``progress`` is a ``ctx.progress``-like factory; ``stop_after_epochs`` ends this call after
    that many epochs (checkpointed, as if interrupted) without exporting.
    """
    t_start = time.time()
    progress = progress or _no_progress
    if _get(settings, "threads"):
        torch.set_num_threads(int(settings.threads))
    device = resolve_device(_get(settings, "device", "auto"))
    seed = int(settings.seed)
    run_dir = _run_dir(settings)
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    resume = bool(_get(settings, "resume", False))
    if resume and not last_path.is_file():
        raise UsageError(f"--resume: {last_path} not found (nothing to resume)")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        # Leftovers of a start that failed before the first checkpoint (config, tokenizer) may be reused.
        leftovers = {p.name for p in run_dir.iterdir()} <= {"config.yaml", "tokenizer", "checkpoints"}
        if not leftovers or any(ckpt_dir.glob("*.pt")):
            raise UsageError(f"run dir {run_dir} is not empty; pass --resume to continue it or choose another --name")
        shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)
    export_to = _get(settings, "export_to")
    if export_to and Path(export_to).exists() and not _get(settings, "overwrite", False):
        raise UsageError(f"--export-to {export_to} exists; pass --overwrite to replace it")

    data = prepare_data(settings, data_source)
    n_train = len(data.splits["train"])
    if n_train < 2:
        raise UsageError("CLIP training needs at least 2 training pairs")
    eval_split = "val" if "val" in data.splits else "train"
    select = _selection(settings, data)

    # Tokenizer: saved in the run dir at the start so that a resumed run tokenises exactly the same way.
    tok_dir = run_dir / "tokenizer"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(exist_ok=True)
    if resume and tok_dir.is_dir():
        tokenizer = load_tokenizer(str(tok_dir))
    elif _get(settings, "tokenizer") or _get(settings, "text_model"):
        tokenizer = load_tokenizer(str(_get(settings, "tokenizer") or settings.text_model))
    else:
        tokenizer = build_tokenizer(data.all_texts(), int(settings.context_length))
    if not tok_dir.is_dir():
        tokenizer.save_pretrained(str(tok_dir))
    _atomic_text(run_dir / "config.yaml", _settings_yaml(settings))

    state = _load_state(last_path) if resume else None
    torch.manual_seed(seed)
    spec = json.loads(state["spec"]) if state is not None else model_spec(settings, tokenizer)
    model = ClipModel.from_spec(spec)
    if _get(settings, "lock_image"):
        model.visual.requires_grad_(False)
    if _get(settings, "lock_text"):
        model.text.requires_grad_(False)
    model.to(device)

    bs = min(int(settings.batch_size), n_train)
    steps_per_epoch = n_train // bs
    optimizer, scheduler = _build_optimizer(model, settings, steps_per_epoch)
    start_epoch, step, best, best_loss, best_epoch, bad_epochs, rows = 0, 0, None, None, -1, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best, best_loss, best_epoch = state["best"], state.get("best_loss"), int(state["best_epoch"])
        bad_epochs, rows = int(state["bad_epochs"]), list(state["rows"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed %s at epoch %d", run_dir, start_epoch)

    train = data.splits["train"]
    labelled = data.labelled
    if labelled:
        # Pre-tokenise every prompt once: table [n_prompts_total, L] and per-class offsets.
        flat = [p for ps in data.class_prompts for p in ps]
        prompt_ids, prompt_mask = tokenize(tokenizer, flat, settings.context_length)
        counts = torch.tensor([len(ps) for ps in data.class_prompts])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    else:
        prompt_ids, prompt_mask = tokenize(tokenizer, list(train.captions or []), settings.context_length)
    amp = bool(_get(settings, "amp", False)) and device.type == "cuda"
    clip_grad = _get(settings, "clip_grad")
    patience = int(_get(settings, "early_stop_patience", 0) or 0)
    epochs = int(settings.epochs)
    last_epoch = start_epoch + (stop_after_epochs if stop_after_epochs is not None else epochs)
    end_epoch = min(epochs, last_epoch)
    stopped_early = False
    max_shift = int(round(float(_get(settings, "augment_shift", 0.0) or 0.0) * int(settings.image_size)))

    with progress((end_epoch - start_epoch) * steps_per_epoch, "train clip", "steps") as advance:
        for epoch in range(start_epoch, end_epoch):
            t0 = time.time()
            model.train()
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(n_train, generator=gen)
            draw = torch.rand(n_train, generator=gen)
            flips = torch.rand(n_train, 2, generator=gen) < 0.5
            # Drawn after the flips (and only when enabled) so runs without shifts keep their random stream.
            shifts = (torch.randint(-max_shift, max_shift + 1, (n_train, 2), generator=gen) if max_shift
                      else None)
            total, count = 0.0, 0
            for b in range(steps_per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                px = normalise_batch(train.images[idx], settings.image_size, list(settings.mean), list(settings.std))
                if _get(settings, "augment", False):
                    fh, fv = flips[idx, 0].view(-1, 1, 1, 1), flips[idx, 1].view(-1, 1, 1, 1)
                    px = torch.where(fh, px.flip(-1), px)
                    px = torch.where(fv, px.flip(-2), px)
                if shifts is not None:
                    px = shift_batch(px, shifts[idx])
                if labelled:
                    y = train.labels[idx]
                    row = offsets[y] + (draw[idx] * counts[y]).long().clamp(max=counts[y] - 1)
                else:
                    y, row = None, idx
                ids, mask = prompt_ids[row].to(device), prompt_mask[row].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    img, _ = model.encode_image(px.to(device))
                    txt, _ = model.encode_text(ids, mask)
                    bias = model.logit_bias
                    lab = y.to(device) if (labelled and _get(settings, "label_aware", False)) else None
                    loss = clip_loss(img.float(), txt.float(), model.scale(), bias, lab)
                if not torch.isfinite(loss):
                    raise XaiclipError(f"loss is {float(loss)} at epoch {epoch + 1}; lower --learning-rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip_grad))
                optimizer.step()
                model.clamp_logit_scale()
                step += 1
                scheduler.step_update(num_updates=step)
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                advance(1)
            scheduler.step(epoch + 1)
            val = evaluate(model, tokenizer, data, eval_split, settings, device)
            row_out: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                                       "train_loss": total / max(count, 1),
                                       "logit_scale": float(model.logit_scale.detach())}
            row_out.update({f"val_{k}": v for k, v in val.items()})
            row_out["seconds"] = round(time.time() - t0, 3)
            rows.append(row_out)
            metric = float(row_out.get(select, float("nan")))
            vloss = float(row_out.get("val_loss", float("nan")))
            if _better(metric, vloss, best, best_loss):
                best, best_loss, best_epoch, bad_epochs = metric, vloss, epoch + 1, 0
                _atomic_torch_save({"model": model.state_dict(), "epoch": epoch + 1, "metric": metric,
                                    "select_metric": select, "spec": json.dumps(model.spec)}, ckpt_dir / "best.pt")
            else:
                bad_epochs += 1
            _atomic_torch_save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step, "best": best,
                "best_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs, "rows": rows,
                "torch_rng": torch.get_rng_state(), "spec": json.dumps(model.spec),
            }, last_path)
            _write_metrics(run_dir / "metrics.csv", rows)
            log.info("epoch %d/%d train_loss %.4f %s %.4f", epoch + 1, epochs, row_out["train_loss"], select, metric)
            if patience and bad_epochs >= patience:
                stopped_early = True
                log.info("early stop: no improvement of %s for %d epochs", select, patience)
                break

    finished = stopped_early or (rows and rows[-1]["epoch"] >= epochs)
    result: dict[str, Any] = {"run_dir": str(run_dir), "epochs_run": len(rows), "best_epoch": best_epoch,
                              "select_metric": select, "best_value": best, "finished": bool(finished),
                              "n_train": n_train, "n_val": len(data.splits.get("val", [])) if "val" in data.splits
                              else 0, "n_test": len(data.splits["test"]) if "test" in data.splits else 0}
    if not finished:
        result["seconds"] = round(time.time() - t_start, 2)
        return result

    # Evaluate and export the best checkpoint (not the live weights of the last epoch).
    if (ckpt_dir / "best.pt").is_file() or best_epoch > 0:
        best_state = _load_state(ckpt_dir / "best.pt")
        model.load_state_dict(best_state["model"])
    else:  # the metric was NaN every epoch (a val split lacking classes): no best, the last epoch is exported
        log.warning("%s was never finite (a val split too small to hold every class?); exporting the last epoch",
                    select)
        best_epoch = len(rows)
        result["best_epoch"] = best_epoch
    model.eval()
    val_best = evaluate(model, tokenizer, data, eval_split, settings, device)
    test = evaluate(model, tokenizer, data, "test", settings, device) if "test" in data.splits else {}
    model.cpu()
    meta = export_meta(
        model, image_size=settings.image_size, in_chans=settings.in_chans, mean=settings.mean, std=settings.std,
        context_length=settings.context_length, class_names=data.class_names, templates=data.templates,
        name=_get(settings, "name") or run_dir.name,
        extra={"class_prompts": data.class_prompts, "trained_on": data.info, "best_epoch": best_epoch,
               "select_metric": select, "val": val_best, "test": test},
    )
    export_dir = save_export(model, tokenizer, meta, run_dir / "export")
    result.update({"export_dir": str(export_dir), "val": val_best, "test": test,
                   "params": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - t_start, 2)})
    if export_to:
        target = Path(export_to)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(export_dir, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        result["export_to"] = str(target)
    _atomic_text(run_dir / "results.json", json.dumps(result, indent=2, default=float) + "\n")
    return result
